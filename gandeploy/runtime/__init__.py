"""The runtime: `Sampler` over PyTorch, ONNX Runtime and TensorRT, and the batching front behind `submit`."""

from .backends import BackendUnavailable
from .batching import Overloaded
from .sampler import Sampler, SamplerError

__all__ = ["BackendUnavailable", "Overloaded", "Sampler", "SamplerError"]
