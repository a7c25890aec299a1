"""TensorRT backend: build a plain engine plan from the exported ONNX, load it back, run one batch.

Precision follows the TensorRT version (see `uses_strongly_typed`):
- TensorRT >= 10.12 (and 11.x, where networks are always strongly typed and BuilderFlag.FP16 is gone): the network
  is strongly typed, so FP16 comes from the FP16 ONNX twin (FP16 inside, FP32 inputs/outputs).
- older 10.x: the FP32 ONNX is built with BuilderFlag.FP16 and TensorRT picks FP16 kernels where it likes.
Either way the built engine is inspected and a build asked for FP16 that holds no FP16 layer is refused.

Engine files are the bare serialized plan (no header of ours), so trtexec and Triton load them as they are; what
they were built for (GPU, TensorRT version, precision) is in the file name and the returned metadata.
`import tensorrt` happens inside functions only: this module imports without TensorRT.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch

from ..artifacts import atomic_path
from ..errors import UserError

PRECISIONS = ("fp16", "fp32")
MIN_TENSORRT = (10, 0)
STRONGLY_TYPED_FROM = (10, 12)  # first release whose strongly typed path we rely on for FP16
REBUILD_HINT = "rebuild it on this machine with `gandeploy export --trt`"

_log = logging.getLogger(__name__)
_FILENAME = re.compile(r"^generator\.(?P<gpu>[a-z0-9-]+)\.sm(?P<sm>\d+)\.trt(?P<trt>[0-9a-z.]+?)\."
                       r"(?P<precision>fp16|fp32)\.plan$")
# FP16 as the engine inspector writes it: tensor types "Half" (10.x "Format/Datatype", 11.x "DataType"), formats such
# as "Row major linear FP16 format", FP16 kernel names such as "..._f16f16_f16f32_..."; bfloat16 is not FP16.
_HALF = re.compile(r"half|fp16|(?<!b)float16|(?<![a-z])f16", re.IGNORECASE)
_NAME_KEYS = ("Name", "Metadata")  # user-chosen names (ONNX node names) may contain anything, "fp16" included


class TensorRTUnavailable(UserError):
    """tensorrt does not import, or no CUDA GPU is visible to torch."""


class EngineMismatch(UserError):
    """An engine file that this TensorRT / GPU cannot deserialize."""


# ---- pure helpers ---------------------------------------------------------------------------------------------


def _version_tuple(version: str) -> tuple[int, int]:
    match = re.match(r"^\s*(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return int(match.group(1)), int(match.group(2))


def uses_strongly_typed(trt_version: str) -> bool:
    """True for TensorRT >= 10.12 (including 11.x): FP16 comes from the FP16 ONNX; False for older 10.x
    (BuilderFlag.FP16)."""
    return _version_tuple(trt_version) >= STRONGLY_TYPED_FROM


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def engine_filename(gpu_name: str, compute_capability: tuple[int, int], trt_version: str, precision: str) -> str:
    """e.g. 'generator.nvidia-h100-80gb-hbm3.sm90.trt10.13.3.fp16.plan' (slugified GPU name, lower case)."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    major, minor = compute_capability
    version = re.sub(r"[^0-9a-z.]+", "-", trt_version.strip().lower()).strip("-.")
    return f"generator.{_slug(gpu_name) or 'gpu'}.sm{int(major)}{int(minor)}.trt{version}.{precision}.plan"


def _built_for(path: Path) -> str:
    """What an engine file was built for, read from its name where it follows engine_filename."""
    match = _FILENAME.match(path.name)
    if match is None:
        return "another TensorRT version or GPU"
    return f"TensorRT {match['trt']} on {match['gpu']} (sm{match['sm']})"


def _one_line(parts) -> str:
    return "; ".join(" ".join(str(p).split()) for p in parts if str(p).strip())


def _strings(node):
    """Every string in a JSON value, names left out."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key not in _NAME_KEYS:
                yield from _strings(value)


def fp16_layer_count(engine_info: dict) -> int:
    """Layers of an engine inspector JSON report (ProfilingVerbosity.DETAILED) that read, write or compute FP16:
    tensor types first of all, and kernel names, which still say f16 where fused casts hide the FP16 tensors."""
    layers = engine_info.get("Layers", [])
    # a bare name is all there is without DETAILED verbosity, and names prove nothing
    return sum(1 for layer in layers if isinstance(layer, dict) and any(_HALF.search(s) for s in _strings(layer)))


def _check_shapes(shapes: dict) -> dict[str, dict[str, list[int]]]:
    """(min, opt, max) per input -> the metadata's profile; refuses what TensorRT would reject less clearly."""
    if not shapes:
        raise UserError("shapes must give (min, opt, max) for every engine input")
    profile = {}
    for name, triple in shapes.items():
        dims = [[int(d) for d in shape] for shape in triple]
        if len(dims) != 3 or len({len(d) for d in dims}) != 1:
            raise UserError(f"shapes[{name!r}] must be three shapes (min, opt, max) of one rank, got {triple!r}")
        lo, opt, hi = dims
        if any(d < 1 for d in lo) or not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise UserError(f"shapes[{name!r}] needs 1 <= min <= opt <= max in every axis, got {triple!r}")
        profile[name] = {"min": lo, "opt": opt, "max": hi}
    return profile


# ---- TensorRT plumbing ----------------------------------------------------------------------------------------


def availability() -> str | None:
    """None when tensorrt imports and a CUDA GPU is visible to torch; else the one-line reason."""
    missing, fixes = [], []
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001 -- a broken install raises OSError etc., not only ImportError
        missing.append(f"the `tensorrt` Python module ({type(exc).__name__}: {exc})")
        fixes.append("pip install the tensorrt wheel matching your CUDA, e.g. `pip install tensorrt-cu12`")
    else:
        version = str(getattr(trt, "__version__", "unknown"))
        if not re.match(r"^\d+\.\d+", version) or _version_tuple(version) < MIN_TENSORRT:
            missing.append(f"TensorRT >= {MIN_TENSORRT[0]} (found {version})")
            fixes.append("upgrade it, e.g. `pip install -U tensorrt-cu12`")
    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "torch.cuda.is_available() is False"
        missing.append(f"a CUDA GPU visible to torch ({why})")
        fixes.append("run on a machine with an NVIDIA GPU and a CUDA build of torch")
    if not missing:
        return None
    return " ".join(f"TensorRT export needs {' and '.join(missing)}: {'; or '.join(fixes)}".split())


def _require() -> None:
    reason = availability()
    if reason is not None:
        raise TensorRTUnavailable(reason)


@functools.lru_cache(maxsize=1)
def _trt_logger():
    """One logger for every builder and runtime of the process (TensorRT warns when they differ); it keeps the
    error messages so failures can say what TensorRT said, and passes errors and warnings to `logging` (INFO)."""
    import tensorrt as trt

    class Recorder(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            # INFO, not higher: failures quote the errors in their own one-line message, and build warnings are
            # mostly noise on the command line; configure logging to see them
            level = int(severity)
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if level <= int(trt.ILogger.Severity.WARNING):
                _log.info("TensorRT: %s", msg)

    return Recorder()


@functools.lru_cache(maxsize=1)
def _runtime():
    """Kept for the process: engines must not outlive the runtime that deserialized them."""
    import tensorrt as trt

    return trt.Runtime(_trt_logger())


def _gpu() -> tuple[str, tuple[int, int]]:
    device = torch.cuda.current_device()
    return torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device))


def _parse(trt, builder, onnx_path: Path, strongly_typed: bool):
    """A network from an ONNX file; parse_from_file so weights stored beside the model are found."""
    flags = 0
    if strongly_typed and _version_tuple(trt.__version__) < (11, 0):
        # 11.x is always strongly typed and has deprecated the flag; 10.12+ needs it to honour the ONNX types
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, _trt_logger())
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise UserError(f"TensorRT could not parse {onnx_path}: {_one_line(errors) or 'no details given'}")
    return network, parser  # the parser owns weights the network refers to until the build is done


def _add_profile(builder, network, config, shapes: dict) -> None:
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if set(inputs) != set(shapes):
        raise UserError(f"shapes name {sorted(shapes)} but the ONNX inputs are {sorted(inputs)}")
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        rank = len(inputs[name].shape)
        if len(lo) != rank:
            raise UserError(f"shapes[{name!r}] has rank {len(lo)} but the ONNX input has rank {rank}")
        try:
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"shapes[{name!r}] do not fit the ONNX input {tuple(inputs[name].shape)}: {exc}") from None
    config.add_optimization_profile(profile)


def _load_timing_cache(config, path: Path | None):
    """The timing cache saved by an earlier build, or a new one; a cache TensorRT rejects (other version or GPU)
    is replaced rather than failing the build."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
    except RuntimeError:  # a damaged or foreign file
        cache = None
    # ignore_mismatch=False: timings from another GPU would mislead tactic choice
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        _log.warning("TensorRT timing cache %s does not fit this TensorRT/GPU; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _inspect(trt, engine, shapes: dict) -> dict:
    """The engine inspector's JSON report. A context with concrete input shapes is attached because, for dynamic
    shapes, TensorRT leaves tensor formats out of the report without one."""
    context = engine.create_execution_context()
    for name, (_, opt, _) in shapes.items():
        context.set_input_shape(name, tuple(opt))
    inspector = engine.create_engine_inspector()
    if hasattr(inspector, "execution_context"):  # the attribute was named `context` in early 10.x
        inspector.execution_context = context
    else:
        inspector.context = context
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def build_engine(fp32_onnx: Path, fp16_onnx: Path | None, out_dir: Path, *,
                 shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
                 precision: str = "fp16", workspace_gib: float = 4.0, timing_cache: Path | None = None) -> dict:
    """Build an engine for this GPU, check it, save it atomically in out_dir and return its metadata."""
    _require()
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if not workspace_gib > 0:
        raise UserError(f"workspace_gib must be positive, got {workspace_gib}")
    profile_meta = _check_shapes(shapes)
    version = trt.__version__
    strongly_typed = uses_strongly_typed(version)
    onnx_path = Path(fp32_onnx)
    if precision == "fp16" and strongly_typed:
        if fp16_onnx is None:
            raise UserError(f"TensorRT {version} takes FP16 from the ONNX graph: an FP16 engine needs the FP16 ONNX "
                            f"(export with FP16 on), or build with precision fp32")
        onnx_path = Path(fp16_onnx)
    if not onnx_path.is_file():
        raise UserError(f"ONNX file not found: {onnx_path}")
    out_dir, timing_cache = Path(out_dir), Path(timing_cache) if timing_cache is not None else None

    logger = _trt_logger()
    logger.errors.clear()
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, onnx_path, strongly_typed)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for the FP16 check below
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # "fp32" means FP32 math: the reference-accuracy engine
    _add_profile(builder, network, config, shapes)
    _load_timing_cache(config, timing_cache)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT {version} could not build an engine from {onnx_path.name}: "
                        f"{_one_line(logger.errors[-3:]) or 'no error message (INFO logging shows its warnings)'}")
    data = bytes(plan)
    if timing_cache is not None:  # saved even if the checks below fail: the timings are still good
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    del parser

    engine = _runtime().deserialize_cuda_engine(data)
    if engine is None:
        raise RuntimeError(f"TensorRT {version} cannot load the engine it just built: {_one_line(logger.errors[-3:])}")
    fp16_layers = fp16_layer_count(_inspect(trt, engine, shapes))
    if precision == "fp16" and fp16_layers == 0:
        if strongly_typed:
            how, fix = f"the FP16 ONNX {onnx_path.name}", "check that this ONNX computes in FP16 inside"
        else:
            how, fix = "the FP32 ONNX with BuilderFlag.FP16", "use TensorRT >= 10.12 with the FP16 ONNX"
        raise UserError(f"TensorRT {version} built an engine without a single FP16 layer from {how}; refusing a "
                        f"silent FP32 engine labelled fp16: {fix}, or build with precision fp32")

    gpu, capability = _gpu()
    name = engine_filename(gpu, capability, version, precision)
    with atomic_path(out_dir / name) as tmp:
        tmp.write_bytes(data)
    return {"file": name, "tensorrt_version": version, "gpu": gpu,
            "compute_capability": f"{capability[0]}.{capability[1]}", "precision": precision,
            "strongly_typed": strongly_typed, "profile": profile_meta, "workspace_gib": float(workspace_gib),
            "fp16_layers": fp16_layers, "layers": int(engine.num_layers), "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def load_engine(path: Path):
    """Deserialize an engine file; EngineMismatch when this TensorRT/GPU cannot (built elsewhere, or damaged)."""
    _require()
    import tensorrt as trt

    path = Path(path)
    if not path.is_file():
        raise UserError(f"TensorRT engine not found: {path}")
    logger = _trt_logger()
    logger.errors.clear()
    try:
        engine = _runtime().deserialize_cuda_engine(path.read_bytes())
        said = logger.errors[-2:]
    except Exception as exc:  # noqa: BLE001 -- some releases raise instead of returning None
        engine, said = None, [*logger.errors[-1:], str(exc)]
    if engine is None:
        gpu, (major, minor) = _gpu()
        raise EngineMismatch(
            f"cannot load TensorRT engine {path}: it was built for {_built_for(path)} or the file is damaged, "
            f"and this machine has TensorRT {trt.__version__} on {gpu} (sm{major}{minor}); "
            f"{REBUILD_HINT}" + (f"; TensorRT said: {_one_line(said)}" if said else ""))
    return engine


def _torch_dtype(trt, dtype) -> torch.dtype:
    pairs = (("FLOAT", torch.float32), ("HALF", torch.float16), ("BF16", torch.bfloat16), ("INT8", torch.int8),
             ("UINT8", torch.uint8), ("INT32", torch.int32), ("INT64", torch.int64), ("BOOL", torch.bool))
    for attr, torch_dtype in pairs:  # getattr: not every release has every type
        if getattr(trt.DataType, attr, None) == dtype:
            return torch_dtype
    raise UserError(f"TensorRT tensor type {dtype} has no torch equivalent here")


def run_engine(engine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one batch for verification (not a serving path): torch CUDA tensors as device buffers, one
    execution context, one torch CUDA stream; returns the outputs as numpy arrays."""
    _require()
    import tensorrt as trt

    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if set(feeds) != set(inputs):
        raise UserError(f"the engine takes inputs {sorted(inputs)}, got {sorted(feeds)}")
    context = engine.create_execution_context()
    if context is None:
        raise RuntimeError(f"TensorRT could not create an execution context: {_one_line(_trt_logger().errors[-2:])}")

    device = torch.device("cuda", torch.cuda.current_device())
    buffers = {}
    for name in inputs:
        tensor = torch.from_numpy(np.ascontiguousarray(feeds[name]))
        tensor = tensor.to(device=device, dtype=_torch_dtype(trt, engine.get_tensor_dtype(name))).contiguous()
        if not context.set_input_shape(name, tuple(tensor.shape)):
            raise UserError(f"input {name!r} of shape {tuple(tensor.shape)} is outside the engine's profile")
        buffers[name] = tensor
    for name in outputs:  # shapes are known once every input shape is set
        shape = tuple(context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise RuntimeError(f"output {name!r} has a data-dependent shape {shape}, which run_engine does not handle")
        buffers[name] = torch.empty(shape, dtype=_torch_dtype(trt, engine.get_tensor_dtype(name)), device=device)
    for name, tensor in buffers.items():
        context.set_tensor_address(name, tensor.data_ptr())

    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))  # the input copies were queued on the current stream
    if not context.execute_async_v3(stream.cuda_stream):
        raise RuntimeError(f"TensorRT execution failed: {_one_line(_trt_logger().errors[-2:])}")
    stream.synchronize()
    return {name: buffers[name].cpu().numpy() for name in outputs}
