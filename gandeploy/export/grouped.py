"""Convolutions whose group count is the batch size, rewritten so that the batch axis stays dynamic.

StyleGAN2's modulated convolution is often written as one grouped conv over the whole batch: the input reshaped to
(1, batch * channels, h, w), per-sample weights stacked to (batch * out, in, k, k), `groups=batch` (lucidrains'
stylegan2-pytorch, NVIDIA's fused_modconv, many forks). ONNX's Conv fixes its group count in the graph, so such a
graph cannot take another batch size. Here each such convolution becomes, exactly, one matrix product per kernel
tap between the group's weights and a strided slice of the padded input; a transposed one is first turned into a
plain one (zeros between the input's pixels, the kernel flipped). Convolutions with a constant group count are left
as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError

aten = torch.ops.aten


def _pair(value) -> tuple:
    return tuple(value) * (2 // len(value)) if isinstance(value, (list, tuple)) else (value, value)


def _pad_or_crop(x: torch.Tensor, top, bottom, left, right) -> torch.Tensor:
    """F.pad for the non-negative amounts, slicing for the negative ones (a transposed conv's padding can exceed
    its kernel's reach)."""
    x = F.pad(x, (max(left, 0), max(right, 0), max(top, 0), max(bottom, 0)))
    h, w = x.shape[-2], x.shape[-1]
    return x[..., max(-top, 0):h - max(-bottom, 0), max(-left, 0):w - max(-right, 0)]


def conv2d_by_taps(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """F.conv2d for any `groups`, symbolic included: per kernel tap, (groups, out, in) @ (n, groups, in, pixels)."""
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    ci, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    if isinstance(padding, str):  # 'valid' or 'same' (stride 1): the extra pixel of an odd total goes last
        th, tw = (0, 0) if padding == "valid" else (dh * (kh - 1), dw * (kw - 1))
        x = _pad_or_crop(x, th // 2, th - th // 2, tw // 2, tw - tw // 2)
    else:
        ph, pw = _pair(padding)
        x = _pad_or_crop(x, ph, ph, pw, pw)
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    x = x.reshape(n, groups, ci, h, w)
    weights = weight.reshape(groups, -1, ci, kh, kw)
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = x[..., i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            term = torch.matmul(weights[..., i, j], tap.reshape(n, groups, ci, oh * ow))
            out = term if out is None else out + term
    out = out.reshape(n, -1, oh, ow)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


def conv_transpose2d_by_taps(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """F.conv_transpose2d for any `groups`: zeros inserted between the input's pixels, then `conv2d_by_taps` with
    each group's kernel transposed and flipped."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = (_pair(v) for v in (stride, padding, output_padding, dilation))
    n, c, h, w = x.shape
    co, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    if sh > 1 or sw > 1:  # (n, c, h, 1, w, 1) padded to (n, c, h, sh, w, sw): each pixel followed by zeros
        x = F.pad(x.reshape(n, c, h, 1, w, 1), (0, sw - 1, 0, 0, 0, sh - 1)).reshape(n, c, h * sh, w * sw)
        x = x[..., :(h - 1) * sh + 1, :(w - 1) * sw + 1]
    eh, ew = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    x = _pad_or_crop(x, eh, eh + oph, ew, ew + opw)
    per_group = weight.reshape(groups, -1, co, kh, kw).transpose(1, 2).flip(3, 4)  # (groups, out, in, kh, kw)
    flipped = per_group.reshape(-1, per_group.shape[2], kh, kw)
    return conv2d_by_taps(x, flipped, bias, 1, 0, (dh, dw), groups)


def _groups(op, args, kwargs):
    """The group count of a call of convolution op `op`, found by its schema (trailing defaults may be left out)."""
    index = [a.name for a in op._schema.arguments].index("groups")
    return args[index] if index < len(args) else kwargs.get("groups", 1)


def _when_symbolic(op, rewrite):
    """A decomposition of `op` that rewrites only when the group count is symbolic: a constant one stays an
    ordinary Conv."""
    def decompose(*args, **kwargs):
        return NotImplemented if isinstance(_groups(op, args, kwargs), int) else rewrite(*args, **kwargs)
    return decompose


REWRITES = {op: _when_symbolic(op, rewrite) for op, rewrite in (
    (aten.conv2d.default, conv2d_by_taps), (aten.conv2d.padding, conv2d_by_taps),
    (aten.conv_transpose2d.input, conv_transpose2d_by_taps))}
CONVOLUTIONS = {aten.conv1d.default, aten.conv1d.padding, aten.conv2d.default, aten.conv2d.padding,
                aten.conv3d.default, aten.conv3d.padding, aten.conv_transpose1d.default, aten.conv_transpose2d.input,
                aten.conv_transpose3d.input, aten.convolution.default}


def rewrite_batch_groups(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`program` with every 2-D (transposed) convolution whose group count is symbolic rewritten; one line naming
    the module for any other convolution of that kind."""
    if not _symbolic_group_nodes(program):
        return program
    program = program.run_decompositions(REWRITES)
    left = _symbolic_group_nodes(program)
    if left:
        node = left[0]
        raise UserError(f"{_where(node)} runs {node.target.name()} with a group count that depends on the batch "
                        f"size, which ONNX cannot express and gandeploy rewrites for 2-D convolutions only; apply "
                        f"the per-sample weights to the activations instead (scale the input by the styles, one "
                        f"shared convolution, then demodulate, as StyleGAN2's fused_modconv=False does)")
    return program


def _symbolic_group_nodes(program) -> list:
    found = []
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target in CONVOLUTIONS and \
                isinstance(_groups(node.target, node.args, node.kwargs), torch.fx.Node):
            found.append(node)
    return found


def _where(node) -> str:
    """'the generator's conv1 (Conv2DMod)' from the node's module stack, or its source line."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        name = getattr(kind, "__name__", str(kind).rsplit(".", 1)[-1].strip("'>"))
        path = path.removeprefix("L__self__").strip(".")
        for wrapper in ("generator.module.", "generator."):  # ExportGraph, then ModuleGraph around the user's module
            path = path.removeprefix(wrapper)
        return f"the generator's {path or 'module'} ({name})"
    return "a module of the generator"
