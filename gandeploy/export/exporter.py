"""The export pipeline: load the generator, write ONNX into a temporary folder, check it against PyTorch, write
the FP16 twin and check it, write the manifest, rename the folder into place; then, if asked, add a TensorRT engine."""

from __future__ import annotations

import os
import platform
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..artifacts import load_generator
from ..errors import CheckFailed, UserError, cause
from ..formats import manifest as mf
from ..formats.files import atomic_dir, atomic_write_text, sweep
from ..formats.generator import generator_dir
from ..formats.names import check_name
from ..formats.parity import Parity, measure, tolerance_text
from ..formats.references import References, reference_inputs, save_references
from ..formats.vocabulary import PRECISIONS
from . import onnx as ox
CPU_FP16_NOTE = ("ONNX Runtime's CPU provider computes float16 graphs in float32 after casts: this figure measures "
                 "the rounding of stored float16 values, not float16 arithmetic")


@dataclass
class ExportOptions:
    onnx: bool = True
    trt: bool = False
    fp16: bool = True
    opset: int = ox.DEFAULT_OPSET
    min_batch: int = 1
    opt_batch: int = 64
    max_batch: int = 256
    output: str = "uint8"
    workspace_gib: float = 4.0
    latent_distribution: dict | None = None  # gandeploy.latents.distribution(...); None: the standard normal

    def check(self) -> None:
        if self.output not in ox.OUTPUTS:
            raise UserError(f"--output {self.output}: expected one of {', '.join(ox.OUTPUTS)}")
        if self.min_batch < 1:
            raise UserError(f"--min-batch {self.min_batch}: must be at least 1")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise UserError(f"batch range min {self.min_batch}, opt {self.opt_batch}, max {self.max_batch} is out of "
                            f"order; it needs min <= opt <= max")
        if self.opset < 7:
            raise UserError(f"--opset {self.opset}: ONNX opsets below 7 cannot express this generator; "
                            f"use --opset {ox.DEFAULT_OPSET}")


def export(source: str | Path, out: str | Path | None = None, options: ExportOptions | None = None,
           log=print) -> Path:
    """Export the generator of a run (or generator folder) into `out` (default exports/<run name>); returns `out`.

    The folder appears whole or not at all. With options.trt an engine is added afterwards, so a missing TensorRT
    leaves a complete, valid ONNX export behind."""
    options = options or ExportOptions()
    options.check()
    require_onnx_stack()
    source = Path(source)
    if (source / "manifest.json").is_file():  # an existing export: only an engine can be added to it
        if not options.trt:
            raise UserError(f"{source} is already an export; pass a run folder to re-export, or --trt to add an engine")
        add_engine(source, options, log)
        return source
    folder = generator_dir(source)
    generator, config = load_generator(folder)
    run_name = config.get("run_name") or (source.resolve().name if folder != source else source.resolve().parent.name)
    # a name read from a file: it names the export and its default folder only if it is a plain name
    run_name = check_name(run_name, f"{folder / 'config.json'}: run_name" if config.get("run_name") else
                          "the run folder's name")
    out = Path(out) if out is not None else Path("exports") / run_name
    origin = {"generator": str(folder.resolve()), "step": config.get("step"),
              "weights_sha256": mf.sha256(folder / "model.safetensors")}
    return write_export(generator, config, run_name, out, options, origin, folder, log)


def write_export(generator, config: dict, name: str, out: Path, options: ExportOptions, origin: dict,
                 generator_folder: Path | None = None, log=print) -> Path:
    """The export of a generator module `generator(z, labels)` that `config` describes: ONNX checked against it,
    the FP16 twin, reference outputs, the PyTorch generator folder where there is one, and the manifest."""
    check_name(name, "the export's name (its folder's name)", UserError)
    if options.latent_distribution is not None:  # what z the generator takes: every check below draws from it
        config = {**config, "latent_distribution": options.latent_distribution}
    graph = ox.ExportGraph(generator, options.output, tuple(config["value_range"]))
    seed = secrets.randbelow(2**32)  # fresh latents for the checks, recorded for reproduction
    batches = ox.verification_batches(options.min_batch, options.opt_batch, options.max_batch)
    sweep(out.parent, names={out.name})  # what killed exports of this folder left beside it
    with atomic_dir(out, kind="export") as tmp:
        ox.export_onnx(graph, config, tmp / mf.FP32_FILE, options.opset)
        ox.check_model(tmp / mf.FP32_FILE)
        references = {b: _torch_outputs(graph, config, b, seed + b) for b in batches}
        parity = {"seed": seed, "batch_sizes": batches,
                  "onnxruntime_fp32": _check_onnx(tmp / mf.FP32_FILE, config, references, options.output, "fp32")}
        artifacts = {mf.FP32_FILE: mf.describe(tmp / mf.FP32_FILE, precision="fp32")}
        if options.fp16:
            scopes = generator.float32_scopes() if hasattr(generator, "float32_scopes") else ()
            parity["onnxruntime_fp16"] = _fp16(tmp, config, references, options.output, log, scopes)
            artifacts[mf.FP16_FILE] = mf.describe(tmp / mf.FP16_FILE, precision="fp16")
        if generator_folder is not None:
            # the PyTorch generator travels with the export: the torch backend and parity need no run folder
            (tmp / mf.GENERATOR_DIR).mkdir()
            for file in ("config.json", "model.safetensors"):
                shutil.copyfile(generator_folder / file, tmp / mf.GENERATOR_DIR / file)
                artifacts[f"{mf.GENERATOR_DIR}/{file}"] = mf.describe(tmp / mf.GENERATOR_DIR / file)
        # reference outputs: what `gandeploy verify` checks every backend against, on the machine that serves
        refs = _references(graph, config, options.output)
        save_references(tmp / mf.REFERENCE_FILE, refs)
        artifacts[mf.REFERENCE_FILE] = mf.describe(tmp / mf.REFERENCE_FILE)
        manifest = _manifest(name, origin, config, options, artifacts, parity)
        manifest["references"] = {"file": mf.REFERENCE_FILE, "seed": 0, "count": len(refs.z),
                                  "labels": "k % num_classes" if config["num_classes"] else None,
                                  "reference": "torch fp32 (cpu)",
                                  "tolerances": {p: tolerance_text(options.output, p) for p in PRECISIONS}}
        (tmp / "manifest.json").write_text(mf.dumps(manifest))
    log(summary(out, manifest))
    if options.trt:
        add_engine(out, options, log)
    return out


def _fp16(tmp: Path, config: dict, references: dict, output: str, log, scopes=()) -> dict:
    """The FP16 twin, with the nodes whose values overflow float16 on the check's latents kept in float32
    (StyleGAN2 clamps activations for this reason; Real-ESRGAN users see black or NaN images without it), and
    the generator's own float32 `scopes` (module paths) kept too."""
    feeds = [feeds for feeds, _ in references.values()]
    keep = ox.overflowing_nodes(tmp / mf.FP32_FILE, feeds)
    mix = ox.convert_fp16(tmp / mf.FP32_FILE, tmp / mf.FP16_FILE, keep=[k["node"] for k in keep], scopes=scopes)
    problem = ox.validation_error(tmp / mf.FP16_FILE)
    if problem is not None:  # the converter's fault, not the user's: say what works
        raise UserError(f"the FP16 conversion (onnxconverter-common) made an invalid graph ({problem}); export with "
                        f"--no-fp16: the FP32 export is unaffected")
    figures = _check_onnx(tmp / mf.FP16_FILE, config, references, output, "fp16")
    figures["mixed_precision"] = {**mix, "float32_scopes": list(scopes)}
    weights = mix["weights_float16"] + mix["weights_float32"]
    log(f"FP16: {mix['nodes'] - mix['float32_nodes']} of {mix['nodes']} nodes and "
        f"{mix['weights_float16'] / max(weights, 1):.1%} of {weights:,} weights in float16; float32 kept for "
        f"{mix['float32_post_processing']} post-processing node(s), {mix['float32_scoped']} in the "
        f"{len(scopes)} module(s) the generator keeps in float32, {mix['float32_kept']} overflowing, "
        f"{mix['float32_casts']} cast(s) into float32")
    if not keep:
        return figures
    # ONNX Runtime's CPU provider computes float16 graphs in float32, so overflow never shows there: judge the
    # kept nodes, and what a plain conversion would have done, in float16 arithmetic (onnx.reference, numpy)
    plain = tmp / ".plain.fp16.onnx"
    ox.convert_fp16(tmp / mf.FP32_FILE, plain)
    try:
        # the smallest batch whose latents overflowed (the checks draw fresh latents each time: batch 1 may not)
        batches = list(references)
        batch = min((batches[k["feed"]] for k in keep if k["feed"] is not None), default=min(references))
        smallest = {batch: references[batch]}
        ours, without = (_check_reference_evaluator(path, config, smallest, output)
                         for path in (tmp / mf.FP16_FILE, plain))
    finally:
        plain.unlink(missing_ok=True)
    figures["kept_fp32"] = keep
    figures["float16_arithmetic"] = {"evaluator": "onnx.reference (numpy float16)", "batch": batch,
                                     "kept_fp32": ours, "plain_conversion": without}
    names = ", ".join(f"{k['node']} ({k['op']}, |x| up to {k['max_abs']:.3g})" for k in keep)
    log(f"FP16: kept {len(keep)} node(s) in float32, as their values overflow float16 (65504): {names}. In float16 "
        f"arithmetic: with them kept {_line(ours, output)}, {'PASSED' if ours['passed'] else 'FAILED'}; plain "
        f"conversion {_line(without, output)}, {'PASSED' if without['passed'] else 'FAILED'}")
    if not ours["passed"]:
        raise CheckFailed(f"{mf.FP16_FILE} still loses the FP16 target in float16 arithmetic with {len(keep)} node(s) "
                          f"kept in float32: {_line(ours, output)}; export with --no-fp16")
    return figures


def _check_reference_evaluator(path: Path, config: dict, references: dict, output: str) -> dict:
    """Parity of an FP16 graph computed in float16 by the ONNX reference evaluator (slow: small batches only)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    last = model.graph.node[-1]
    # A uint8 graph ends in a Cast, and NaN cast to uint8 is undefined (numpy's result varies from run to run): read
    # the float values before it, count the non-finite ones as failures, and round the rest as the graph does.
    name = last.input[0] if output == "uint8" and last.op_type == "Cast" else model.graph.output[0].name
    evaluator = ReferenceEvaluator(model)
    pairs, non_finite = [], 0
    with np.errstate(all="ignore"):  # overflow to inf and NaN is what this run is looking for
        for b, (feeds, expected) in references.items():
            got = np.asarray(evaluator.run([name], feeds)[0], dtype=np.float32)
            non_finite += int((~np.isfinite(got)).sum())
            if expected.dtype == np.uint8:
                got = np.clip(np.nan_to_num(got, nan=0.0, posinf=255.0, neginf=0.0), 0, 255)
            pairs.append((b, expected, got.astype(expected.dtype)))
        figures = measure(pairs, output, "fp16", config["value_range"]).as_dict()
    figures.pop("per_batch")
    figures["non_finite"] = non_finite  # NaN or inf anywhere in an image: broken, whatever the cast made of it
    figures["passed"] = bool(figures["passed"]) and not non_finite
    return {k: _json_number(v) for k, v in figures.items()}


def require_onnx_stack() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxconverter_common", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"export needs {', '.join(missing)}; install them with pip install 'gandeploy[export]'")


def _json_number(value):
    """NaN and infinities (a broken FP16 graph's figures) as text: JSON has no spelling for them."""
    return value if not isinstance(value, float) or np.isfinite(value) else str(value)


def _torch_outputs(graph, config: dict, n: int, seed: int) -> tuple[dict, np.ndarray]:
    feeds = ox.example_inputs(config, n, seed)
    return feeds, _forward(graph, config, feeds)


def _forward(graph, config: dict, feeds: dict) -> np.ndarray:
    try:
        with torch.inference_mode():
            return graph(*(torch.from_numpy(feeds[name]) for name in ox.input_names(config))).numpy()
    except (Exception, SystemExit) as e:  # a user's module may fail on a batch its own checks did not try
        raise UserError(f"the generator failed on a batch of {len(feeds['z'])} check latents: {cause(e)}") from None


def _references(graph, config: dict, output: str) -> References:
    z, labels = reference_inputs(config)
    feeds = {"z": z} if labels is None else {"z": z, "label": labels}
    return References(z, labels, _forward(graph, config, feeds), output)


def _check_onnx(path: Path, config: dict, references: dict, output: str, precision: str,
                raise_on_fail: bool = True) -> dict:
    session = ox.session(path)
    pairs = []
    for b, (feeds, expected) in references.items():
        got = session.run(None, feeds)[0]
        if got.shape != expected.shape or got.dtype != expected.dtype:
            raise CheckFailed(f"{path.name}: batch {b} gave {got.dtype}{got.shape}, expected "
                              f"{expected.dtype}{expected.shape}")
        pairs.append((b, expected, got))
    parity = measure(pairs, output, precision, config["value_range"])
    if not parity.passed and raise_on_fail:
        raise CheckFailed(f"{path.name} does not match PyTorch: {parity.line()} (needs {parity.tolerance})")
    figures = {**parity.as_dict(), "provider": "CPUExecutionProvider", "reference": "torch fp32 (cpu)"}
    if precision == "fp16":
        figures["note"] = CPU_FP16_NOTE
    return figures


def _line(figures: dict, kind: str) -> str:
    """The one-line summary of parity figures stored in a manifest."""
    keys = ("max_abs_err", "mean_abs_err", "uint8_differing", "psnr_db", "tolerance", "passed")
    return Parity(kind, **{k: figures[k] for k in keys}).line()


def _manifest(name: str, origin: dict, config: dict, options: ExportOptions, artifacts: dict, parity: dict) -> dict:
    import onnx
    import onnxconverter_common
    import onnxruntime

    size, channels = config["resolution"], config["channels"]
    inputs = [{"name": "z", "dtype": "float32", "shape": ["batch", config["latent_dim"]]}]
    if config["num_classes"]:
        inputs.append({"name": "label", "dtype": "int64", "shape": ["batch"], "classes": config["num_classes"]})
    image = ["batch", size, size, channels] if options.output == "uint8" else ["batch", channels, size, size]
    return {
        "schema_version": mf.SCHEMA_VERSION, "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "generator": {k: config[k] for k in ("family", "latent_dim", "resolution", "channels", "num_classes",
                                             "value_range", "width", "embed_dim", "latent_distribution")
                      if k in config},
        "inputs": inputs,
        "output": {"name": "images", "kind": options.output, "dtype": "uint8" if options.output == "uint8" else
                   "float32", "shape": image, "layout": "NHWC" if options.output == "uint8" else "NCHW"},
        "batch": {"min": options.min_batch, "opt": options.opt_batch, "max": options.max_batch},
        "opset": options.opset, "artifacts": artifacts, "engines": [], "parity": parity,
        "source": origin,
        "versions": {"gandeploy": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "onnxconverter_common": onnxconverter_common.__version__, "numpy": np.__version__},
    }


def summary(out: Path, manifest: dict) -> str:
    lines = [f"exported {manifest['name']} -> {out}  (checked at batch sizes "
             f"{', '.join(map(str, manifest['parity']['batch_sizes']))} against PyTorch FP32)"]
    kind = manifest["output"]["kind"]
    for key, file in (("onnxruntime_fp32", mf.FP32_FILE), ("onnxruntime_fp16", mf.FP16_FILE)):
        f = manifest["parity"].get(key)
        if f:
            verdict = "PASSED" if f["passed"] else "FAILED"
            lines.append(f"  {file:<22} {_line(f, kind)}  {verdict} ({f['tolerance']})")
    for engine in manifest.get("engines", []):
        f = engine["parity"]
        lines.append(f"  {engine['file']:<22} {_line(f, kind)}  {'PASSED' if f['passed'] else 'FAILED'}")
    return "\n".join(lines)


def add_engine(folder: str | Path, options: ExportOptions | None = None, log=print) -> dict:
    """Build a TensorRT engine from an export folder's ONNX, check it against ONNX Runtime FP32, and record it."""
    from . import tensorrt as trt

    options = options or ExportOptions(trt=True)
    folder = Path(folder)
    manifest = mf.load_export(folder)  # bad input first: a damaged export is worth hearing about anywhere
    reason = trt.availability()
    if reason is not None:
        raise trt.TensorRTUnavailable(f"--trt: {reason}; the ONNX export in {folder} is complete and valid")
    config = {**manifest["generator"]}
    precision = "fp16" if options.fp16 else "fp32"
    b = manifest["batch"]
    shapes = {spec["name"]: tuple(tuple([n] + spec["shape"][1:]) for n in (b["min"], b["opt"], b["max"]))
              for spec in manifest["inputs"]}
    fp16_onnx = folder / mf.FP16_FILE if (folder / mf.FP16_FILE).is_file() else None
    # built and checked beside the export, then moved in with the manifest: a failed or interrupted rebuild leaves
    # the engine that was there, and a manifest that matches it
    staging = folder / f".tmp-engine-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        meta = trt.build_engine(folder / mf.FP32_FILE, fp16_onnx, staging, shapes=shapes, precision=precision,
                                workspace_gib=options.workspace_gib, timing_cache=folder.parent / ".trt-timing-cache")
        engine = trt.load_engine(staging / meta["file"])
        session = ox.session(folder / mf.FP32_FILE)
        kind = manifest["output"]["kind"]
        pairs = []
        for n in ox.verification_batches(b["min"], b["opt"], b["max"]):
            feeds = ox.example_inputs(config, n, manifest["parity"]["seed"] + n)
            pairs.append((n, session.run(None, feeds)[0], trt.run_engine(engine, feeds)["images"]))
        parity = measure(pairs, kind, precision, config["value_range"])
        if not parity.passed:
            raise CheckFailed(f"{meta['file']} does not match ONNX Runtime: {parity.line()} (needs "
                              f"{parity.tolerance}); the export keeps what it had")
        meta["parity"] = {**parity.as_dict(), "reference": "onnxruntime fp32 (cpu)"}
        manifest["engines"] = [e for e in manifest["engines"] if e["file"] != meta["file"]] + [meta]
        os.replace(staging / meta["file"], folder / meta["file"])
        atomic_write_text(folder / "manifest.json", mf.dumps(manifest))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(summary(folder, manifest))
    return meta
