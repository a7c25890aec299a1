"""Building an engine: a plain engine plan from the exported ONNX, checked and saved beside it. No torch.
See the package's docstring for how precision follows the TensorRT version."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from ...errors import UserError
from ...formats.engines import engine_filename, gpu_slug, version_slug
from ...formats.vocabulary import check_precision
from ...formats.files import atomic_path
from ...runtime.backends.tensorrt import (
    current_device,
    gpu_info,
    one_line,
    require,
    logged_errors,
    trt_logger,
    trt_runtime,
    version_tuple,
)
from .operators import check_operators

STRONGLY_TYPED_FROM = (10, 12)  # first release whose strongly typed path we rely on for FP16

_log = logging.getLogger(__package__)  # gandeploy.export.tensorrt, as before the split
# The inspector's per-tensor type fields: "Format/Datatype" in 10.x (e.g. "Half", "Float", "Row major linear FP16
# format"); 11.x's "I/O Tensors" use "DataType" and "Format", and NVIDIA's own 11.x layer-info tools also read
# "Datatype". bfloat16 ("BFloat16", "BF16") is not FP16.
_TENSOR_TYPE_KEYS = ("Format/Datatype", "DataType", "Datatype", "Format")
_HALF = re.compile(r"(?<![a-z0-9])(half|fp16|float16)(?![a-z0-9])", re.IGNORECASE)


# ---- pure helpers ---------------------------------------------------------------------------------------------


def uses_strongly_typed(trt_version: str) -> bool:
    """True for TensorRT >= 10.12 (including 11.x): FP16 comes from the FP16 ONNX; False for older 10.x
    (BuilderFlag.FP16)."""
    return version_tuple(trt_version) >= STRONGLY_TYPED_FROM


def fp16_layer_count(engine_info: dict) -> int:
    """Layers of an engine inspector JSON report (ProfilingVerbosity.DETAILED) with an FP16 input or output tensor.
    Only the tensors' type fields are read: names, tactic names and values, kernel names and layer parameters hold
    hashes, hex numbers and enums (kHALF_PIXEL) that merely look like FP16."""
    count = 0
    for layer in engine_info.get("Layers", []):
        if not isinstance(layer, dict):  # a bare name: the engine was not built with DETAILED verbosity
            continue
        tensors = [t for key in ("Inputs", "Outputs") for t in layer.get(key) or [] if isinstance(t, dict)]
        if any(isinstance(t.get(k), str) and _HALF.search(t[k]) for t in tensors for k in _TENSOR_TYPE_KEYS):
            count += 1
    return count


def parser_error_message(onnx_path, trt_version: str, errors: list[str], limit: int = 3) -> str:
    """One line from the ONNX parser's errors (str() of each: 'In node N with name: ... and operator: ...
    (func): CODE: desc' in 10.x and 11.x)."""
    shown = one_line(errors[:limit]) or "the parser gave no error message"
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return f"TensorRT {trt_version} could not parse {Path(onnx_path).name}: {shown}{more}"


def timing_cache_path(folder, gpu_name: str, compute_capability: tuple[int, int], trt_version: str) -> Path:
    """The timing cache for one GPU model, compute capability and TensorRT version in `folder`, e.g.
    'timing.nvidia-h100-80gb-hbm3.sm90.trt10.13.3.cache': TensorRT rejects timings from another GPU or version, so
    each gets its own file."""
    major, minor = compute_capability
    gpu, version = gpu_slug(gpu_name) or "gpu", version_slug(trt_version)
    return Path(folder) / f"timing.{gpu}.sm{int(major)}{int(minor)}.trt{version}.cache"


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


def _parse(trt, builder, onnx_path: Path, strongly_typed: bool):
    """A network from an ONNX file; parse_from_file so weights stored beside the model are found. Any parser error
    fails the build, even when parse_from_file returned True."""
    flags = 0
    if strongly_typed and version_tuple(trt.__version__) < (11, 0):
        # 11.x is always strongly typed and has deprecated the flag; 10.12+ needs it to honour the ONNX types
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger())
    parsed = parser.parse_from_file(str(onnx_path))
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    if not parsed or errors:
        raise UserError(parser_error_message(onnx_path, trt.__version__, errors))
    return network, parser  # the parser owns weights the network refers to until the build is done


def _keep_post_processing_fp32(trt, network) -> int:
    """Weakly typed FP16 only: the layers that end the network (the uint8 conversion: scale, round, clip,
    transpose, cast; and the generator's output activation) compute and output FP32, as in the FP16 ONNX (in FP16,
    values near 255 are 0.125 apart). Found by walking back from the output through elementwise and layout layers
    with one computed operand, as `onnx._post_processing_nodes` does on the graph; returns how many layers were
    constrained."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producer = {layer.get_output(j).name: layer for layer in layers for j in range(layer.num_outputs)}
    constant = set()  # tensors computed from constants alone (a CONSTANT layer, perhaps reshaped or cast)
    for layer in layers:
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        if layer.type == trt.LayerType.CONSTANT or (inputs and all(t is None or t.name in constant for t in inputs)):
            constant.update(layer.get_output(j).name for j in range(layer.num_outputs))
    kinds = {getattr(trt.LayerType, k) for k in ("ELEMENTWISE", "ACTIVATION", "UNARY", "SHUFFLE", "IDENTITY", "CAST")
             if hasattr(trt.LayerType, k)}
    floats = (trt.DataType.FLOAT, trt.DataType.HALF)
    constrained, name = 0, network.get_output(0).name
    while name in producer and producer[name].type in kinds:
        layer = producer[name]
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        if layer.type == trt.LayerType.SHUFFLE:
            inputs = inputs[:1]  # a dynamic reshape's second input is its shape
        variable = [t.name for t in inputs if t is not None and t.name not in constant]
        if len(variable) != 1:  # two computed operands: the generator's own arithmetic
            break
        layer.precision = trt.DataType.FLOAT
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in floats:  # not the final cast's uint8
                layer.set_output_type(j, trt.DataType.FLOAT)
        constrained += 1
        name = variable[0]
    return constrained


def _add_profile(builder, network, config, shapes: dict) -> None:
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if set(inputs) != set(shapes):
        raise UserError(f"shapes name {sorted(shapes)} but the ONNX inputs are {sorted(inputs)}")
    profile = builder.create_optimization_profile()
    mark = trt_logger().count
    for name, (lo, opt, hi) in shapes.items():
        rank = len(inputs[name].shape)
        if len(lo) != rank:
            raise UserError(f"shapes[{name!r}] has rank {len(lo)} but the ONNX input has rank {rank}")
        try:
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"shapes[{name!r}] do not fit the ONNX input {tuple(inputs[name].shape)}: {exc}") from None
    if config.add_optimization_profile(profile) < 0:
        raise UserError(f"TensorRT rejected the optimization profile {shapes}: {logged_errors(mark)}")


def _timing_cache(config, data: bytes):
    """An ITimingCache from serialized bytes (b"": a new one); None for bytes TensorRT rejects."""
    try:
        return config.create_timing_cache(data)
    except RuntimeError:  # a damaged or foreign file
        return None


def _load_timing_cache(config, path: Path | None) -> None:
    """The cache saved by earlier builds on this GPU and TensorRT, or a new one; a file TensorRT rejects is replaced
    after the build rather than failing it. ignore_mismatch=False: timings from another GPU would mislead."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = _timing_cache(config, data) if data else None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if data:
            _log.warning("TensorRT timing cache %s does not fit this TensorRT/GPU; starting a new one", path)
        cache = _timing_cache(config, b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise RuntimeError("TensorRT could not set up a timing cache")


def _save_timing_cache(config, path: Path) -> None:
    """Merge this build's timings into the file (other builds may have written it since it was read): under an
    exclusive lock on `<file>.lock`, ITimingCache.combine, then an atomic replace."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent builds there may drop each other's new timings
        fcntl = None
    built = config.get_timing_cache()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        data = path.read_bytes() if path.is_file() else b""
        merged = _timing_cache(config, data) if data else None
        if merged is None or not merged.combine(built, ignore_mismatch=False):
            if data:
                _log.warning("TensorRT timing cache %s cannot be merged with; replacing it", path)
            merged = built
        with atomic_path(path) as tmp:
            tmp.write_bytes(bytes(merged.serialize()))


def _inspect(trt, engine, shapes: dict) -> dict:
    """The engine inspector's JSON report. A context with concrete input shapes is attached because, for dynamic
    shapes, TensorRT leaves tensor formats out of the report without one."""
    mark = trt_logger().count
    context = engine.create_execution_context()
    if context is None:
        raise RuntimeError(f"TensorRT could not create an execution context to inspect the engine: {logged_errors(mark)}")
    for name, (_, opt, _) in shapes.items():
        if not context.set_input_shape(name, tuple(opt)):
            raise RuntimeError(f"TensorRT refused the opt shape {tuple(opt)} of {name!r}: {logged_errors(mark)}")
    inspector = engine.create_engine_inspector()
    if inspector is None:
        raise RuntimeError(f"TensorRT could not create an engine inspector: {logged_errors(mark)}")
    inspector.execution_context = context
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def build_engine(fp32_onnx: Path, fp16_onnx: Path | None, out_dir: Path, *,
                 shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
                 precision: str = "fp16", workspace_gib: float = 4.0, timing_cache: Path | None = None) -> dict:
    """Build an engine for this thread's GPU, check it, save it atomically in out_dir and return its metadata.

    timing_cache: a folder (created if needed) holding one cache file per GPU, compute capability and TensorRT
    version (see `timing_cache_path`); each build reads its file and merges its new timings back. None: no cache."""
    require()
    import tensorrt as trt

    check_precision(precision)
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
    check_operators(onnx_path, version)  # before the parser and builder spend minutes on it
    if timing_cache is not None and Path(timing_cache).is_file():
        raise UserError(f"timing cache {timing_cache} is a file (an older gandeploy's single cache); delete it: the "
                        f"timing cache is now a folder of per-GPU, per-TensorRT files")
    out_dir = Path(out_dir)
    gpu, capability = gpu_info(current_device())
    cache_file = None if timing_cache is None else timing_cache_path(timing_cache, gpu, capability, version)

    logger = trt_logger()
    mark = logger.count
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, onnx_path, strongly_typed)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    # DETAILED: layer tensor types for the FP16 check below; execution contexts lower their NVTX verbosity
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        if _keep_post_processing_fp32(trt, network):
            # OBEY, not PREFER: FP32 is always available, so the constraint can always be met
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # "fp32" means FP32 math: the reference-accuracy engine
    _add_profile(builder, network, config, shapes)
    _load_timing_cache(config, cache_file)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT {version} could not build an engine from {onnx_path.name}: {logged_errors(mark)}")
    data = bytes(plan)
    if cache_file is not None:  # saved even if the checks below fail: the timings are still good
        _save_timing_cache(config, cache_file)
    del parser

    mark = logger.count
    engine = trt_runtime().deserialize_cuda_engine(data)
    if engine is None:
        raise RuntimeError(f"TensorRT {version} cannot load the engine it just built: {logged_errors(mark)}")
    fp16_layers = fp16_layer_count(_inspect(trt, engine, shapes))
    if precision == "fp16" and fp16_layers == 0:
        if strongly_typed:
            how, fix = f"the FP16 ONNX {onnx_path.name}", "check that this ONNX computes in FP16 inside"
        else:
            how, fix = "the FP32 ONNX with BuilderFlag.FP16", "use TensorRT >= 10.12 with the FP16 ONNX"
        raise UserError(f"TensorRT {version} built an engine without a single FP16 layer from {how}; refusing a "
                        f"silent FP32 engine labelled fp16: {fix}, or build with precision fp32")

    name = engine_filename(gpu, capability, version, precision)
    with atomic_path(out_dir / name) as tmp:
        tmp.write_bytes(data)
    return {"file": name, "tensorrt_version": version, "gpu": gpu,
            "compute_capability": f"{capability[0]}.{capability[1]}", "precision": precision,
            "strongly_typed": strongly_typed, "profile": profile_meta, "workspace_gib": float(workspace_gib),
            "fp16_layers": fp16_layers, "layers": int(engine.num_layers), "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}
