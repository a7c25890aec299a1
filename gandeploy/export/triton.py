"""Triton Inference Server model repository: an export becomes `<repo>/<name>/config.pbtxt` + `1/model.onnx`
(platform onnxruntime_onnx), or `1/model_sm<XY>.plan` per TensorRT engine the manifest lists (tensorrt_plan).

The config is built as Triton's own ModelConfig protobuf (tritonclient's model_config_pb2) and checked before the
folder appears: it parses back, and its tensors match the ONNX graph. Triton itself is not run here; it loads the
model and, for plans, the engine. Engines load only in a Triton whose TensorRT built them.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import ArtifactError, UserError
from ..formats import manifest as mf
from ..formats.files import atomic_dir
from ..formats.manifest import FP16_FILE, FP32_FILE
from ..formats.vocabulary import check_precision

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

KINDS = ("gpu", "cpu")
PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan")
MARKER = "gandeploy.json"  # says we wrote the folder, so a rewrite may replace it; Triton ignores unknown files
TRT_WORKSPACE_BYTES = 1 << 30  # TensorRT execution provider's scratch space; a small generator needs far less
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a folder name Triton serves: no path, not hidden


def _schema():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise UserError("Triton repositories need Triton's config schema: pip install 'gandeploy[triton]'") from None
    return model_config_pb2, text_format


def _triton_type(dtype: str) -> str:
    """'float32' -> 'TYPE_FP32', Triton's own table (call after _schema)."""
    import numpy as np
    from tritonclient.utils import np_to_triton_dtype

    return "TYPE_" + np_to_triton_dtype(np.dtype(dtype))


def _graph_io(path: Path) -> tuple[dict, dict]:
    """({input: (numpy dtype name, dims)}, {output: ...}) of an ONNX file; a dynamic axis is -1."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # protobuf raises DecodeError, a bad path OSError
        raise ArtifactError(f"{path} is not a readable ONNX model ({type(e).__name__}); re-run gandeploy export") \
            from None

    def spec(value):
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return str(tensor_dtype_to_np_dtype(t.elem_type)), dims

    weights = {w.name for w in graph.initializer}  # older exporters list weights among the inputs
    return ({v.name: spec(v) for v in graph.input if v.name not in weights}, {v.name: spec(v) for v in graph.output})


# ---- writing --------------------------------------------------------------------------------------------------


def write_repository(export_dir: str | Path, repo_dir: str | Path, *, name: str | None = None,
                     precision: str = "fp32", instances: int = 1, kind: str = "gpu", max_queue_delay_us: int = 100,
                     tensorrt_accelerator: bool = False, log=print) -> Path:
    """Write the model folder `<repo_dir>/<name>` (name defaults to the export's) for Triton; returns it.

    The folder appears whole, checked by `check_model`, or not at all. A folder we wrote before is replaced; any
    other folder of that name is refused."""
    pb, text_format = _schema()
    _check_options(precision, instances, kind, max_queue_delay_us, tensorrt_accelerator)
    export_dir = Path(export_dir)
    manifest = mf.load_export(export_dir)
    name = name or manifest["name"]
    if not _NAME.match(name):
        raise UserError(f"--name {name!r}: a Triton model name is a folder name of letters, digits, _ . - "
                        f"(not starting with . or -)")
    config, files = _model(pb, export_dir, manifest, name, precision, kind, tensorrt_accelerator, log)
    _schedule(pb, config, manifest["batch"], instances, kind, max_queue_delay_us)
    target = Path(repo_dir) / name
    if target.exists() and not (target / MARKER).is_file():
        raise UserError(f"{target} exists and was not written by gandeploy; remove it, or pass --name OTHER")
    with atomic_dir(target) as tmp:
        (tmp / "1").mkdir()
        for file, source in files.items():
            shutil.copyfile(source, tmp / "1" / file)
        (tmp / "config.pbtxt").write_text(text_format.MessageToString(config))
        note = {"written_by": f"gandeploy {__version__}", "export": str(export_dir.resolve()), "precision": precision}
        (tmp / MARKER).write_text(json.dumps(note, indent=2) + "\n")
        _check(tmp, name)
    log(f"wrote Triton model {name} -> {target}  ({config.platform}, {precision}, max_batch_size "
        f"{config.max_batch_size}, {instances} x {pb.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind)})")
    return target


def _model(pb, export_dir: Path, manifest: dict, name: str, precision: str, kind: str, tensorrt_accelerator: bool,
           log):
    """The config's model part and {file in 1/: its source}: TensorRT plans where the manifest has engines of this
    precision, else the ONNX of this precision."""
    engines = {e["compute_capability"]: e for e in manifest.get("engines", []) if e["precision"] == precision}
    if engines and kind != "gpu":
        raise UserError(f"the export has {precision} TensorRT engines, which run on GPUs only: use --kind gpu")
    source = export_dir / (FP16_FILE if precision == "fp16" else FP32_FILE)
    if not engines and not source.is_file():
        raise UserError(f"{export_dir} has no {source.name}: re-export with FP16 on, or use --precision fp32")
    # engines keep the FP32 graph's inputs and outputs, whichever ONNX they were built from
    graph = _graph_io(export_dir / FP32_FILE if engines else source)
    _agree(manifest, *graph, export_dir)
    config = _config(pb, name, manifest, *graph)
    if not engines:
        config.platform = "onnxruntime_onnx"
        if tensorrt_accelerator:
            _accelerator(config, precision)
        return config, {"model.onnx": source}
    if tensorrt_accelerator:
        log("--trt-accelerator ignored: the model is already a TensorRT plan")
    config.platform, files = "tensorrt_plan", {}
    for capability, engine in engines.items():  # one engine per compute capability: the manifest's last one
        file = f"model_sm{capability.replace('.', '')}.plan"
        files[file] = export_dir / engine["file"]
        config.cc_model_filenames[capability] = file
        config.default_model_filename = file  # on a GPU not listed Triton tries this one, and says why it fails
    return config, files


def _check_options(precision, instances, kind, max_queue_delay_us, tensorrt_accelerator) -> None:
    check_precision(precision, "--precision")
    if kind not in KINDS:
        raise UserError(f"--kind {kind}: expected one of {', '.join(KINDS)}")
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        raise UserError(f"--instances {instances}: must be an integer >= 1")
    if isinstance(max_queue_delay_us, bool) or not isinstance(max_queue_delay_us, int) or max_queue_delay_us < 0:
        raise UserError(f"--max-queue-delay-us {max_queue_delay_us}: must be an integer >= 0")
    if tensorrt_accelerator and kind != "gpu":
        raise UserError("--trt-accelerator needs --kind gpu: the TensorRT execution provider runs on GPU instances")


def _agree(manifest: dict, inputs: dict, outputs: dict, export_dir: Path) -> None:
    """The manifest and the graph must describe the same tensors, with a dynamic batch axis first."""
    expected = {s["name"]: (s["dtype"], s["shape"]) for s in manifest["inputs"]}
    out = manifest["output"]
    for declared, actual in ((expected, inputs), ({out["name"]: (out["dtype"], out["shape"])}, outputs)):
        for tensor, (dtype, shape) in declared.items():
            got = actual.get(tensor)
            if got is None or got[0] != dtype or got[1][:1] != [-1] or got[1][1:] != shape[1:]:
                has = "no such tensor" if got is None else f"{got[0]} {got[1]} (-1: dynamic)"
                raise ArtifactError(f"{export_dir}: manifest.json says {tensor} is {dtype} {shape}, the ONNX graph "
                                    f"has {has}; re-run gandeploy export")
    if set(inputs) != set(expected):
        raise ArtifactError(f"{export_dir}: the ONNX graph's inputs {sorted(inputs)} are not the manifest's "
                            f"{sorted(expected)}; re-run gandeploy export")


def _config(pb, name: str, manifest: dict, inputs: dict, outputs: dict):
    config = pb.ModelConfig(name=name, max_batch_size=manifest["batch"]["max"])
    tensors = [(config.input.add(), n, inputs[n]) for n in (s["name"] for s in manifest["inputs"])]
    tensors.append((config.output.add(), manifest["output"]["name"], outputs[manifest["output"]["name"]]))
    for message, tensor, (dtype, dims) in tensors:
        message.name, message.data_type = tensor, pb.DataType.Value(_triton_type(dtype))
        if dims[1:]:  # Triton's dims leave out the batch axis
            message.dims.extend(dims[1:])
        else:  # a batch-only tensor: Triton needs a dim, so requests send (n, 1) and the model gets (n,)
            message.dims.append(1)
            message.reshape.SetInParent()
    return config


def _schedule(pb, config, batch: dict, instances: int, kind: str, max_queue_delay_us: int) -> None:
    # opt is the batch the export was tuned and checked at; max is the most a request may fill
    preferred = sorted({b for b in (batch["opt"], batch["max"]) if 1 <= b <= config.max_batch_size})
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    kinds = {"gpu": pb.ModelInstanceGroup.KIND_GPU, "cpu": pb.ModelInstanceGroup.KIND_CPU}
    config.instance_group.add(count=instances, kind=kinds[kind])


def _accelerator(config, precision: str) -> None:
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    accelerator.parameters["precision_mode"] = precision.upper()
    accelerator.parameters["max_workspace_size_bytes"] = str(TRT_WORKSPACE_BYTES)


# ---- checking -------------------------------------------------------------------------------------------------


def check_model(model_dir: str | Path) -> ModelConfig:
    """Parse `<model_dir>/config.pbtxt` with Triton's schema and check what Triton would refuse at load (ONNX
    tensors are compared with the graph; plans are only looked for, since reading them needs TensorRT); returns the
    ModelConfig. Stricter than Triton in one place: instance count 0 (which Triton reads as 1) is refused."""
    model_dir = Path(model_dir)
    return _check(model_dir, model_dir.name)


def _check(folder: Path, name: str):
    pb, text_format = _schema()
    path = folder / "config.pbtxt"
    if not path.is_file():
        raise ArtifactError(f"{folder} has no config.pbtxt; write the model with gandeploy triton")
    try:
        config = text_format.Parse(path.read_text(), pb.ModelConfig())
    except text_format.ParseError as e:  # the schema also refuses out-of-range values, e.g. a negative queue delay
        reason = str(e).split(" : ", 1)[-1]
        raise ArtifactError(f"{path}, line {e.GetLine()}: {reason}; fix it, or write it again with gandeploy triton") \
            from None
    except UnicodeDecodeError:
        raise ArtifactError(f"{path} is not text; write it again with gandeploy triton") from None

    def fail(message: str):
        raise ArtifactError(f"{path}: {message}")

    _check_fields(config, name, fail)
    # Triton skips folders whose name is not a number or starts with 0
    versions = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))
    if not versions:
        fail("no version folder (1/, 2/, ...) beside it; write the model again with gandeploy triton")
    for version in versions:
        for file in _model_files(config):
            if not (version / file).is_file():
                fail(f"{version.name}/{file} is missing; copy it there or write the model again")
        if config.platform == "onnxruntime_onnx":
            _check_io(pb, config, _graph_io(version / _model_files(config)[0]), fail)
    return config


def _check_fields(config, name: str, fail) -> None:
    if config.name and config.name != name:
        fail(f'name "{config.name}" differs from its folder {name!r}; Triton requires them equal: rename one')
    if config.platform not in PLATFORMS:
        fail(f'platform "{config.platform}": expected one of {", ".join(PLATFORMS)}')
    if config.max_batch_size < 1:
        fail(f"max_batch_size {config.max_batch_size}: these models batch on their first axis; set it >= 1")
    for size in config.dynamic_batching.preferred_batch_size:
        if not 1 <= size <= config.max_batch_size:
            fail(f"preferred_batch_size {size} is outside 1..max_batch_size ({config.max_batch_size}); lower it")
    accelerators = config.optimization.execution_accelerators
    tensorrt = config.platform == "tensorrt_plan" or len(accelerators.gpu_execution_accelerator) > 0
    for i, group in enumerate(config.instance_group):
        if group.count < 1:
            fail(f"instance_group[{i}] count {group.count} (or none): Triton would quietly run 1; set count >= 1")
        if group.kind == group.KIND_CPU and tensorrt:
            fail(f"instance_group[{i}] is KIND_CPU but TensorRT runs on GPUs only; set kind: KIND_GPU")
    for tensor in [*config.input, *config.output]:
        if not tensor.dims:
            fail(f'"{tensor.name}" has no dims; Triton needs one: dims: [ 1 ] with reshape {{ shape: [ ] }}')
        if tensor.HasField("reshape") and -1 not in tensor.dims and \
                math.prod(tensor.dims) != math.prod(tensor.reshape.shape):
            fail(f'"{tensor.name}" dims {list(tensor.dims)} and reshape {list(tensor.reshape.shape)} differ in size')


def _model_files(config) -> list[str]:
    if config.platform == "onnxruntime_onnx":
        return [config.default_model_filename or "model.onnx"]
    files = set(config.cc_model_filenames.values()) | {config.default_model_filename}
    return sorted(files - {""}) or ["model.plan"]


def _check_io(pb, config, graph: tuple[dict, dict], fail) -> None:
    """Names, data types and dims against the ONNX graph, the batch axis left out and reshape honoured."""
    for section, declared, actual in (("input", config.input, graph[0]), ("output", config.output, graph[1])):
        for tensor in declared:
            if tensor.name not in actual:
                fail(f'{section} "{tensor.name}" is not in the model, whose {section}s are {", ".join(actual)}; '
                     f"rename it")
            dtype, dims = actual[tensor.name]
            if pb.DataType.Name(tensor.data_type) != _triton_type(dtype):
                fail(f'{section} "{tensor.name}" data_type {pb.DataType.Name(tensor.data_type)}: the model has '
                     f"{dtype}; set data_type: {_triton_type(dtype)}")
            if dims[:1] != [-1]:
                fail(f'{section} "{tensor.name}": the model\'s first axis is {dims[:1]}, not a dynamic batch axis; '
                     f"re-run gandeploy export")
            seen = list(tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims)  # what the model gets
            if seen != dims[1:]:
                fix = f"dims: {dims[1:]}" if dims[1:] else "dims: [ 1 ] with reshape { shape: [ ] }"
                fail(f'{section} "{tensor.name}" gives the model dims {seen} (batch left out), the model has '
                     f"{dims[1:]}: set {fix}")
    missing = set(graph[0]) - {t.name for t in config.input}
    if missing:
        fail(f"the model's input(s) {', '.join(sorted(missing))} are not declared; add them to input [ ... ]")
