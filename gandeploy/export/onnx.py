"""ONNX export of a generator, its FP16 twin, and the numeric checks that must pass before an export is done.

Graph contract: inputs `z` float32 (n, latent_dim) and, for conditional models, `label` int64 (n,); one output
`images`: uint8 (n, h, w, c) with post-processing fused in (output="uint8"), or float32 (n, c, h, w) in the
generator's value range (output="float"). The batch axis is dynamic.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError, first_line
from ..formats.images import levels
from ..formats.latents import latents
from .grouped import rewrite_batch_groups

DEFAULT_OPSET = 18
OUTPUTS = ("uint8", "float")


class ExportGraph(nn.Module):
    """The generator plus, for uint8 output, the float -> uint8 (n, h, w, c) conversion, so a service does no
    per-pixel work and moves a quarter of the bytes."""

    def __init__(self, generator: nn.Module, output: str, value_range=(-1.0, 1.0)):
        super().__init__()
        self.generator, self.output, self.value_range = generator, output, tuple(value_range)

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        x = self.generator(z, label)  # (n, c, h, w) float
        if self.output == "float":
            return x
        # the one float -> uint8 arithmetic (round-half-to-even in torch and in ONNX Round); transposed before the
        # cast so that the Cast to uint8 is the graph's last op: TensorRT takes UINT8 only as a graph output
        return levels(x, self.value_range).permute(0, 2, 3, 1).to(torch.uint8)


def input_names(config: dict) -> list[str]:
    return ["z", "label"] if config["num_classes"] else ["z"]


def example_inputs(config: dict, n: int, seed: int) -> dict[str, np.ndarray]:
    """Counter-based latents of `seed` and (conditional models) labels 0, 1, 2, ... mod classes, shuffled by seed."""
    feeds = {"z": latents(seed, n, config["latent_dim"], dist=config.get("latent_distribution"))}
    if config["num_classes"]:
        feeds["label"] = np.random.default_rng(seed).integers(0, config["num_classes"], n, dtype=np.int64)
    return feeds


def export_onnx(graph: ExportGraph, config: dict, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """torch.onnx (dynamo) with a dynamic batch axis; BatchNorm is folded into the convolutions by the exporter's
    optimizer. The example batch is 2: with 1 the exporter specialises the batch axis to a constant."""
    feeds = example_inputs(config, 2, seed=0)
    args = tuple(torch.from_numpy(feeds[name]) for name in input_names(config))
    batch = torch.export.Dim("batch", min=1, max=65536)
    shapes = {name: {0: batch} for name in input_names(config)}
    try:
        # the dynamo exporter narrates its progress on stdout; a CLI's output is what we say
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_logs("torch.onnx"),
              _quiet_logs("onnxscript")):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_exported(graph.eval(), args, shapes), args, input_names=input_names(config),
                                        output_names=["images"], dynamic_shapes=shapes, opset_version=opset,
                                        dynamo=True, optimize=True)
    except UserError:
        raise
    except SystemExit as e:  # the generator's forward (a user's module) called sys.exit while being traced
        raise UserError(f"the generator called sys.exit({e.code!r}) while torch.export traced its forward; a "
                        f"module to export must not exit") from None
    except Exception as e:  # the exporter raises many types; the root cause's last line says what went wrong
        root = e.__cause__ or e
        lines = [line.strip() for line in str(root).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(root).__name__
        if opset != DEFAULT_OPSET:
            raise UserError(f"--opset {opset}: torch {torch.__version__} could not export this generator "
                            f"({reason}); use --opset {DEFAULT_OPSET} (the default)") from None
        raise UserError(f"torch {torch.__version__} could not export this generator: {type(root).__name__}: "
                        f"{reason[:300]}; {_export_hint(str(root))}") from None
    # the exporter converts to an older opset when it can, and otherwise keeps its own quietly: say so
    actual = next((o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if actual != opset:
        raise UserError(f"--opset {opset}: torch {torch.__version__} cannot export this generator to opset {opset} "
                        f"(it produced opset {actual}); use --opset {DEFAULT_OPSET} (the default)")
    random = [n for n in program.model_proto.graph.node if n.op_type in RANDOM_OPS]
    if random:
        raise UserError(f"the generator draws random numbers inside forward ({random[0].op_type} at node "
                        f"{random[0].name!r}): the export would bake in noise that no seed controls; pass the noise "
                        f"as part of z (a larger --latent-dim) or make it a buffer")
    program.save(str(path), external_data=False)


def _exported(graph: nn.Module, args: tuple, shapes: dict):
    """The torch.export program with convolutions grouped by the batch rewritten; the module itself where
    torch.export fails, so that torch.onnx tries its other ways and reports the cause."""
    try:
        program = torch.export.export(graph, args, dynamic_shapes=shapes, strict=False)
    except Exception:
        return graph
    return rewrite_batch_groups(program)


RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def _export_hint(error: str) -> str:
    """What to do, for the kinds of module torch.export cannot trace."""
    text = error.lower()
    if "autograd.function" in text or ("custom" in text and "function" in text):
        return "a custom autograd Function needs a forward written in plain torch ops for export"
    if "data-dependent" in text or "guardondatadependent" in text or "could not guard" in text:
        return ("forward branches on tensor values (data-dependent control flow): make the branch depend on "
                "shapes or constants, or use torch.cond")
    if "no fake impl" in text or "abstract impl" in text or "register_fake" in text or "extension" in text:
        return "a compiled extension op needs a reference implementation in torch ops (or a torch.library fake)"
    return "rewrite that part of forward in standard torch ops, then export again"


@contextlib.contextmanager
def _quiet_logs(name: str):
    """torch.onnx logs warnings such as 'torchvision is not installed. Skipping torchvision::nms' that concern
    nothing a generator uses."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_model(path: Path) -> None:
    problem = validation_error(path)
    if problem is not None:
        raise UserError(f"{path} is not a valid ONNX model ({problem}); re-run gandeploy export")


def validation_error(path: Path) -> str | None:
    """The ONNX checker's first complaint about a file (full check, with shape inference), or None."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, OSError, ValueError) as e:
        return first_line(e)
    return None


def convert_fp16(src: Path, dst: Path, keep=(), scopes=()) -> dict:
    """Mixed precision with float32 inputs and outputs (onnxconverter-common: a pure graph rewrite that runs on
    any machine; ModelOpt AutoCast would need the CUDA stack). The uint8 post-processing stays float32: in float16,
    values near 255 are spaced 0.125 apart, enough to move a pixel across a rounding boundary. `keep` names more
    nodes to leave in float32 (see `overflowing_nodes`), `scopes` module paths of the generator whose nodes stay
    float32 (a StyleGAN's mapping network and low resolutions, as NVIDIA's own mixed precision does). Returns how
    much of the graph is float16."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    post, scoped = _post_processing_nodes(model), nodes_in_scopes(model, scopes)
    # casts into float32 (from int64 or bool: one_hot(labels).float()) stay as they are: the converter would type
    # their output float16 but leave to=FLOAT, an invalid graph (microsoft/onnxconverter-common#320)
    casts = [n.name for n in model.graph.node
             if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)]
    block = list(dict.fromkeys([*post, *scoped, *keep, *casts]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about values clipped to the float16 range; parity checks those
        half = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, node_block_list=block)
    _restore_float32_weights(half, model)
    onnx.save(half, str(dst))
    sizes = {t: 0 for t in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    for t in half.graph.initializer:
        if t.data_type in sizes:
            sizes[t.data_type] += int(np.prod(t.dims))
    return {"nodes": len(model.graph.node), "float32_nodes": len(block), "float32_post_processing": len(post),
            "float32_scoped": len(scoped), "float32_kept": len(keep), "float32_casts": len(casts),
            "weights_float16": sizes[onnx.TensorProto.FLOAT16], "weights_float32": sizes[onnx.TensorProto.FLOAT]}


def _restore_float32_weights(half, original) -> None:
    """The converter stores every weight in float16 and casts it back for the nodes it keeps in float32: give those
    weights their float32 values again (a float32 layer with float16-rounded weights is not a float32 layer)."""
    import onnx

    floats = {t.name: t for t in original.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    consumers: dict[str, list] = {}
    for node in half.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    renamed, dropped = {}, set()
    for k, t in enumerate(half.graph.initializer):
        users = consumers.get(t.name, [])
        if t.data_type != onnx.TensorProto.FLOAT16 or t.name not in floats or not users or not all(
                n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT for n in users):
            continue
        half.graph.initializer[k].CopyFrom(floats[t.name])
        for cast in users:
            renamed[cast.output[0]] = t.name
            dropped.add(id(cast))
    kept = [node for node in half.graph.node if id(node) not in dropped]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
    del half.graph.node[:]
    half.graph.node.extend(kept)
    restored = set(renamed.values()) | set(renamed)
    infos = [v for v in half.graph.value_info if v.name not in restored]  # the old float16 typings
    del half.graph.value_info[:]
    half.graph.value_info.extend(infos)


def nodes_in_scopes(model, scopes) -> list[str]:
    """Nodes that torch.onnx recorded as computed inside one of the generator's submodules `scopes` (paths below
    the exported graph's `generator`, from each node's pkg.torch.onnx.name_scopes metadata)."""
    import ast

    prefixes = tuple(f"generator.{scope}" for scope in scopes)
    names = []
    for node in model.graph.node if prefixes else ():
        meta = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "[]")
        try:
            path = ast.literal_eval(meta)
        except (ValueError, SyntaxError):
            continue
        if any(str(part) == p or str(part).startswith(p + ".") for part in path for p in prefixes):
            names.append(node.name)
    return names


FLOAT16_MAX = 65504.0


def overflowing_nodes(path: Path, feeds: list[dict]) -> list[dict]:
    """Nodes of an FP32 ONNX that read or write a float value beyond float16's range (|x| > 65504) on any of
    `feeds`: in float16 those values become inf, and inf becomes NaN or a saturated image downstream. Each comes
    with its op, the largest |value| seen (ModelOpt AutoCast decides by the same kind of threshold) and the index of
    the feed that made it (None for a weight)."""
    import onnx
    import onnxruntime as ort

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    floats = {v.name for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    floats |= {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    declared = {o.name for o in model.graph.output}
    watched = [name for node in model.graph.node for name in node.output if name in floats and name not in declared]
    for name in watched:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph's own tensors
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    largest: dict[str, float] = {}
    source: dict[str, int | None] = {}
    for k, feed in enumerate(feeds):
        for name, value in zip(names, session.run(None, feed)):
            peak = float(np.max(np.abs(value))) if name in floats and value.size else 0.0
            if peak > largest.get(name, 0.0):
                largest[name], source[name] = peak, k
    for t in model.graph.initializer:  # weights too large for float16 are clipped by the converter
        if t.name in floats:
            largest[t.name] = float(np.max(np.abs(onnx.numpy_helper.to_array(t)))) if np.prod(t.dims) else 0.0
    kept = []
    for node in model.graph.node:
        seen = max(((largest.get(name, 0.0), name) for name in (*node.input, *node.output) if name), default=None)
        if seen and seen[0] > FLOAT16_MAX:
            kept.append({"node": node.name, "op": node.op_type, "max_abs": seen[0], "feed": source.get(seen[1]),
                         "why": "overflows float16"})
    return kept


# what the float -> uint8 conversion is made of (levels(): shift, scale, round, clip; then transpose and cast), and
# the elementwise ops a generator ends with (its output activation, a constant scale), as cheap in float32
_POST_OPS = {"Add", "Sub", "Mul", "Div", "Round", "Clip", "Max", "Min", "Transpose", "Cast", "Sigmoid", "Tanh",
             "HardSigmoid", "Softsign", "Relu", "LeakyRelu"}
_LAYOUT_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}  # input 0 is the data, the others say its shape


def _post_processing_nodes(model) -> list[str]:
    """Names of the nodes at the graph's end that stay float32: the uint8 conversion and the elementwise ops with
    constant operands before it (the generator's output activation, whatever it is), read off the graph. In
    float16 a Sigmoid's output near 1 is spaced 2**-11 apart, a quarter of a grey level at 255."""
    import onnx

    if model.graph.output[0].type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        return []  # float output: no conversion in the graph
    nodes = list(model.graph.node)
    producers = {out: node for node in nodes for out in node.output}
    constants = {t.name for t in model.graph.initializer}
    constants |= {out for node in nodes if node.op_type == "Constant" for out in node.output}
    names, tensor = [], model.graph.output[0].name
    while tensor in producers and producers[tensor].op_type in _POST_OPS | _LAYOUT_OPS:
        node = producers[tensor]
        data = node.input[:1] if node.op_type in _LAYOUT_OPS else node.input
        variable = [name for name in data if name and name not in constants]
        if len(variable) != 1:  # two computed operands: the generator's own arithmetic (a skip connection, say)
            break
        names.append(node.name)
        tensor = variable[0]
    return names


def session(path: Path, providers=("CPUExecutionProvider",)):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=list(providers))


def verification_batches(min_batch: int, opt_batch: int, max_batch: int) -> list[int]:
    """1 (or the minimum), an odd size, the opt size and the max size, in range and without repeats."""
    odd = next((b for b in (7, 5, 3, opt_batch - 1, opt_batch + 1) if min_batch <= b <= max_batch and b % 2), None)
    sizes = [max(1, min_batch), odd, opt_batch, max_batch]
    return sorted({b for b in sizes if b is not None})
