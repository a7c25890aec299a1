"""Write pickles laid out as NVIDIA's network pickles, without NVIDIA's code.

stylegan2-ada-pytorch and stylegan3 pickle each network as a call of torch_utils.persistence.
_reconstruct_persistent_obj(meta), meta = {type: 'class', version: 6, module_src, class_name, state}, where state
is the module's __dict__ (_parameters, _buffers, _modules, _init_args, _init_kwargs, training, ...). Here a fake
`torch_utils.persistence` and `dnnlib.util` exist only while the pickle is written; the module source stored in
it is whatever the test wants (a payload that must never run, say)."""

from __future__ import annotations

import collections
import contextlib
import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

DATA = Path(__file__).resolve().parents[1] / "data" / "stylegan"
HARMLESS_SOURCE = "# the class's source would be here\n"


def payload_source(marker: Path) -> str:
    """Module source that writes `marker` if anything ever compiles and runs it (NVIDIA's loader would)."""
    return f"open({str(marker)!r}, 'w').write('the pickle ran code')\nclass Generator: pass\n"


class Persistent:
    """Pickles as a persistent object of NVIDIA's code would."""

    def __init__(self, class_name: str, source: str, **state):
        self.class_name, self.source, self.state = class_name, source, state

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.source, class_name=self.class_name, state=self.state)
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,)


class Call:
    """Pickles as a call of `function(*args)`: how a hostile pickle runs os.system."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@contextlib.contextmanager
def nvidia_modules():
    """Fake `torch_utils.persistence` and `dnnlib.util` so that pickle can name their functions by path."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # never called: only its name is written
        raise AssertionError("not for loading")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    names = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
             "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    saved = {k: sys.modules.get(k) for k in names}
    sys.modules.update(names)
    try:
        yield util.EasyDict
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def class_for(path: str, family: str) -> str:
    """The class NVIDIA's code has at a submodule path (what our family detection reads)."""
    last = path.split(".")[-1]
    if path == "":
        return "Generator"
    if path in ("mapping", "synthesis"):
        return {"mapping": "MappingNetwork", "synthesis": "SynthesisNetwork"}[path]
    if path == "synthesis.input":
        return "SynthesisInput"
    if family == "stylegan2" and path.count(".") == 1 and last.startswith("b"):
        return "SynthesisBlock"
    return "SynthesisLayer" if last.startswith(("conv", "L", "torgb")) else "FullyConnectedLayer"


def module_tree(state: dict, family: str, source: str, init_kwargs: dict, easydict, init_args=()) -> Persistent:
    """Persistent objects for every submodule path of a flat state_dict, with parameters as Parameters (names
    ending in weight/bias/const/strength/...) and the rest as buffers, as nn.Module would hold them."""
    tree: dict = {}
    for key, value in state.items():
        *path, name = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node.setdefault(".tensors", {})[name] = value
    return _persistent(tree, "", family, source, easydict(_easy(init_kwargs, easydict)), tuple(init_args))


BUFFERS = ("w_avg", "noise_const", "resample_filter", "magnitude_ema", "up_filter", "down_filter", "freqs", "phases",
           "transform")


def _persistent(node: dict, path: str, family: str, source: str, init_kwargs, init_args) -> Persistent:
    tensors = node.get(".tensors", {})
    params = collections.OrderedDict((k, torch.nn.Parameter(v, requires_grad=False)) for k, v in tensors.items()
                                     if k not in BUFFERS)
    buffers = collections.OrderedDict((k, v) for k, v in tensors.items() if k in BUFFERS)
    children = collections.OrderedDict(
        (name, _persistent(child, f"{path}.{name}" if path else name, family, source, {}, ()))
        for name, child in node.items() if name != ".tensors")
    state = dict(training=False, _parameters=params, _buffers=buffers, _non_persistent_buffers_set=set(),
                 _modules=children, _backward_hooks=collections.OrderedDict(),
                 _forward_hooks=collections.OrderedDict(), _init_args=init_args, _init_kwargs=init_kwargs,
                 weight_gain=np.float64(0.5), in_size=np.asarray([36, 36]))
    return Persistent(class_for(path, family), source, **state)


def _easy(value, easydict):
    return easydict({k: _easy(v, easydict) for k, v in value.items()}) if isinstance(value, dict) else value


def fixture(name: str) -> tuple[dict, dict, dict]:
    """(state_dict, the JSON record, the npz arrays) of a golden fixture made with NVIDIA's code."""
    record = json.loads((DATA / f"{name}.json").read_text())
    with np.load(DATA / f"{name}.npz") as npz:
        arrays = dict(npz)
    return load_file(str(DATA / f"{name}.safetensors")), record, arrays


def family_of_class(cls: str) -> str:
    return "stylegan3" if cls.endswith("networks_stylegan3.Generator") else "stylegan2"


def write_fixture_pickle(name: str, path: Path, source: str = HARMLESS_SOURCE, extra=None, protocol=4) -> Path:
    """An NVIDIA-layout network pickle (G, G_ema, D, training_set_kwargs) holding a golden fixture's weights."""
    state, record, _ = fixture(name)
    family = family_of_class(record["class"])
    with nvidia_modules() as easydict:
        g = module_tree(state, family, source, record["init_kwargs"], easydict, record.get("init_args", ()))
        d = Persistent("Discriminator", source, training=False, _parameters=collections.OrderedDict(
            b0=torch.nn.Parameter(torch.zeros(3))), _buffers=collections.OrderedDict(), _modules=collections.OrderedDict(),
            _init_args=(), _init_kwargs=easydict())
        data = dict(G=g, D=d, G_ema=g, augment_pipe=None,
                    training_set_kwargs=easydict(path="datasets/x.zip", resolution=64), **(extra or {}))
        path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


if __name__ == "__main__":  # python tests/export/nvidia_layout.py sg3_t64 sg3_t64.pkl: a pickle to try export on
    import argparse

    parser = argparse.ArgumentParser(description="Write an NVIDIA-layout network pickle from a golden fixture of "
                                                 "tests/data/stylegan (our files; no NVIDIA code in it).")
    parser.add_argument("name", choices=sorted(p.stem for p in DATA.glob("*.safetensors")))
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    print(write_fixture_pickle(args.name, args.out))
