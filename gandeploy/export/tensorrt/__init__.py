"""TensorRT engine builder: a plain engine plan from the exported ONNX, checked and saved beside it. No torch.

Precision follows the TensorRT version (see `uses_strongly_typed`):
- TensorRT >= 10.12 (and 11.x, where networks are always strongly typed and BuilderFlag.FP16 is gone): the network
  is strongly typed, so FP16 comes from the FP16 ONNX twin (FP16 inside, FP32 inputs/outputs).
- older 10.x: the FP32 ONNX is built with BuilderFlag.FP16 and TensorRT picks FP16 kernels where it likes, except in
  the uint8 post-processing and the generator's output activation, which are held to FP32 as in the FP16 ONNX.
Either way the built engine is inspected and a build asked for FP16 that holds no FP16 layer is refused.
Before any of it, the ONNX graph is checked against TensorRT's operator table (`unsupported_ops`, static: no TensorRT
needed), so an operator TensorRT cannot import is named in one line before a build starts.

- `operators`: that static check.
- `build`: `build_engine`, its timing cache and the FP16 check.
- `run`: `run_engine`, one batch through a built engine to check it (build time, not a serving path).

Engine files are the bare serialized plan (no header of ours), so trtexec and Triton load them as they are; what
they were built for (GPU, TensorRT version, precision) is in the file name (gandeploy.formats.engines) and the
returned metadata. Loading engines and the serving backend live in gandeploy.runtime.backends.tensorrt; the names
the exporter needs from there are re-exported here. `import tensorrt` happens inside functions only: this package
imports without TensorRT.
"""

from ...formats.engines import engine_filename
from ...formats.vocabulary import PRECISIONS
from ...runtime.backends.tensorrt import (
    REBUILD_HINT,
    EngineMismatch,
    TensorRTUnavailable,
    availability,
    load_engine,
)
from .build import (
    build_engine,
    fp16_layer_count,
    parser_error_message,
    timing_cache_path,
    uses_strongly_typed,
)
from .operators import check_operators, unsupported_ops
from .run import run_engine

__all__ = [
    "PRECISIONS",
    "REBUILD_HINT",
    "EngineMismatch",
    "TensorRTUnavailable",
    "availability",
    "build_engine",
    "check_operators",
    "engine_filename",
    "fp16_layer_count",
    "load_engine",
    "parser_error_message",
    "run_engine",
    "timing_cache_path",
    "unsupported_ops",
    "uses_strongly_typed",
]
