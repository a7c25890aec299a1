"""Which ONNX graphs TensorRT's ONNX parser imports: a static check against its operator table, so an operator
TensorRT cannot import is named in one line before a build starts. Needs onnx, not TensorRT."""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError

# The operators the ONNX parser of TensorRT 10.x imports: every row marked "Y" in onnx/onnx-tensorrt's
# docs/operators.md for TensorRT 10.15 (opset 9 to 24); the 10.0 table (opset 9 to 20) lists the same minus Attention,
# RMSNormalization, RotaryEmbedding, TensorScatter, STFT and the window functions, which an older 10.x's parser reports
# itself. The per-operator restrictions that can matter for a generator are checked in `unsupported_ops`, from the
# same table and from the importers in onnxOpImporters.cpp (Pad modes, Resize modes, constant axes and weights).
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization BlackmanWindow
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu
Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool
Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow
PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze
Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
OPSETS = (9, 24)  # the default domain's opsets TensorRT 10.15 imports (10.0: 9 to 20)
MAX_RANK = 8  # nvinfer1::Dims::MAX_DIMS: no tensor of a TensorRT network has more axes
OPERATORS_DOC = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15)"
# ONNX TensorProto data types TensorRT has (DOUBLE is narrowed to FLOAT; INT8/INT4/FP8/FP4 only through quantization)
_TYPES = {"FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE", "INT32", "INT64", "INT8", "INT4", "UINT8", "BOOL",
          "FLOAT8E4M3FN", "FLOAT4E2M1"}
_CAST_TO = {"FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE", "INT32", "INT64", "UINT8", "BOOL"}  # operators.md: Cast
_FLOATS = {"FLOAT", "FLOAT16", "BFLOAT16"}
_FLOAT_ONLY = {"LeakyRelu", "Round", "Tanh", "Sigmoid", "Sqrt", "Reciprocal", "Exp", "Log", "Erf", "Floor",
               "Ceil", "Conv", "ConvTranspose", "Gemm", "MatMul", "Resize"}  # operators.md: FP32, FP16, BF16 only
# inputs that operators.md (or the importer) wants as initializers / build-time constants: op -> (index, name)
_CONSTANT_INPUTS = {"Pad": (3, "axes"), "Slice": (3, "axes"), "Squeeze": (1, "axes"), "Unsqueeze": (1, "axes"),
                    "CumSum": (1, "axis"), "OneHot": (1, "depth"), "Conv": (1, "weights W"),
                    "ConvTranspose": (1, "weights W"),
                    **{op: (1, "axes") for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                                                  "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
                                                  "ReduceSumSquare")}}
_PAD_MODES = {"constant", "reflect", "edge", "wrap"}
_RESIZE = {"mode": ({"nearest", "linear"}, "nearest"),
           "coordinate_transformation_mode": ({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                               "asymmetric", "align_corners"}, "half_pixel"),
           "nearest_mode": ({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}, "round_prefer_floor"),
           "keep_aspect_ratio_policy": ({"stretch"}, "stretch")}
_RANDOM = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def unsupported_ops(model) -> list[str]:
    """What in an ONNX model (a path or a ModelProto) TensorRT 10.x's ONNX parser does not import, one entry per
    operator and problem, e.g. "Pad (node '/up/Pad'): mode 'foo' (TensorRT: constant, reflect, edge, wrap)"; empty
    when every node is in `SUPPORTED_OPS` and meets the restrictions checked here. Static: nothing runs, and TensorRT
    need not be installed. The parser stays the final word: it also knows what this leaves out (subgraphs of
    If/Loop/Scan are not looked into, nor shapes beyond what ONNX shape inference finds)."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)  # weights' values are not needed, only types
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph shape inference cannot follow is checked without the shapes
        inferred = model
    graph = inferred.graph
    type_name = onnx.TensorProto.DataType.Name
    types, ranks, dims = {}, {}, {}
    for value in (*graph.value_info, *graph.input, *graph.output):
        tensor = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor.elem_type:
            types[value.name] = type_name(tensor.elem_type)
        if tensor.HasField("shape"):
            ranks[value.name] = len(tensor.shape.dim)
            dims[value.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param or None
                                for d in tensor.shape.dim]
    for t in graph.initializer:
        types[t.name], ranks[t.name] = type_name(t.data_type), len(t.dims)
    io = {v.name for v in (*graph.input, *graph.output)}
    functions = {(f.domain, f.name): f for f in model.functions}

    found: dict[tuple[str, str], list[str]] = {}

    def flag(node, problem: str) -> None:
        found.setdefault((node.op_type, problem), []).append(node.name or f"{node.op_type} #{node_index[id(node)]}")

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and not OPSETS[0] <= opset <= OPSETS[1]:
        found[("opset", f"opset {opset} (TensorRT imports opset {OPSETS[0]} to {OPSETS[1]})")] = []

    # tensors TensorRT can fold at build time: initializers, Constants and what only they feed (inputs overriding
    # an initializer of the same name are not constant)
    constant = {t.name for t in graph.initializer} - {v.name for v in graph.input}

    def check(nodes, constant: set) -> None:
        for node in nodes:
            op, attrs = node.op_type, {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            inputs = [name for name in node.input if name]
            if all(name in constant for name in inputs) and op not in _RANDOM:
                constant.update(node.output)
            if node.domain not in ("", "ai.onnx"):
                if (node.domain, op) in functions:  # a model-local function: the parser inlines it
                    check(functions[(node.domain, op)].node, set(constant))
                else:
                    flag(node, f"custom domain {node.domain!r} (TensorRT needs a plugin for it)")
                continue
            if op not in SUPPORTED_OPS:
                flag(node, "not in TensorRT's ONNX operator table")
                continue
            for name in (*node.input, *node.output):
                if not name:
                    continue
                kind = types.get(name)
                if kind is not None and kind not in _TYPES:
                    flag(node, f"{kind} tensor {name!r} (TensorRT has no {kind})")
                elif kind == "UINT8" and name not in io:
                    flag(node, f"UINT8 tensor {name!r} inside the graph (TensorRT takes UINT8 only as a network "
                               f"input or output)")
                if ranks.get(name, 0) > MAX_RANK:
                    flag(node, f"rank-{ranks[name]} tensor {name!r} (TensorRT tensors have at most {MAX_RANK} axes)")
            first = types.get(node.input[0]) if node.input else None
            if op in _FLOAT_ONLY and first is not None and first not in _FLOATS:
                flag(node, f"{first} input (TensorRT: FP32, FP16, BF16)")
            if op == "Cast" and type_name(attrs.get("to", 0)) not in _CAST_TO:
                flag(node, f"cast to {type_name(attrs['to'])} (TensorRT: {', '.join(sorted(_CAST_TO))})")
            if op in _CONSTANT_INPUTS:
                index, what = _CONSTANT_INPUTS[op]
                if len(node.input) > index and node.input[index] and node.input[index] not in constant:
                    flag(node, f"{what} computed at run time (TensorRT needs them constant at build time)")
            if op in ("Conv", "ConvTranspose"):
                shape = dims.get(node.input[0])
                if shape is not None and not 3 <= len(shape) <= 5:
                    flag(node, f"rank-{len(shape)} input (TensorRT: 1D, 2D or 3D {op}, input rank 3 to 5)")
                elif shape is not None and isinstance(shape[1], str):
                    flag(node, f"channel axis {shape[1]!r} not fixed (TensorRT needs it at build time)")
            if op == "Pad":
                mode = attrs.get("mode", b"constant")
                mode = mode.decode() if isinstance(mode, bytes) else str(mode)
                if mode not in _PAD_MODES:
                    flag(node, f"mode {mode!r} (TensorRT: {', '.join(sorted(_PAD_MODES))})")
            if op == "Resize":
                for name, (allowed, default) in _RESIZE.items():
                    value = attrs.get(name, default)
                    value = value.decode() if isinstance(value, bytes) else str(value)
                    if value not in allowed:
                        flag(node, f"{name} {value!r} (TensorRT: {', '.join(sorted(allowed))})")
                if attrs.get("antialias", 0):
                    flag(node, "antialias (TensorRT does not antialias)")

    node_index = {id(node): k for k, node in enumerate(graph.node)}
    node_index.update({id(node): k for f in model.functions for k, node in enumerate(f.node)})
    check(graph.node, constant)
    out = []
    for (op, problem), nodes in found.items():
        where = "" if not nodes else f" (node {nodes[0]!r}" + (f" and {len(nodes) - 1} more)" if len(nodes) > 1
                                                                else ")")
        out.append(f"{op}{where}: {problem}" if op != "opset" else problem)
    return out


def check_operators(onnx_path, trt_version: str | None = None) -> None:
    """Refuse, in one line naming the file and the operators, an ONNX graph TensorRT cannot import (see
    `unsupported_ops`), before a build spends minutes getting there."""
    problems = unsupported_ops(onnx_path)
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        trt = f"TensorRT {trt_version}" if trt_version else "TensorRT 10.x"
        raise UserError(f"{Path(onnx_path).name} uses what {trt} cannot import: {shown} (per {OPERATORS_DOC})")
