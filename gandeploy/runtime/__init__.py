"""The runtime: `Sampler` over PyTorch, ONNX Runtime and TensorRT, the batching front behind `submit`, and
`verify`. numpy plus each backend's own library, imported when that backend is asked for: no torch here."""

from .backends import BackendUnavailable
from .batching import Overloaded
from .sampler import Sampler, SamplerError

__all__ = ["BackendUnavailable", "Overloaded", "Sampler", "SamplerError"]
