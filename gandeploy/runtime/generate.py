"""`gandeploy generate`: many images from an export, written as shards a training pipeline reads directly.

Image k of seed s is the same as everywhere else (the Sampler, the server). Shard i holds images
[i * shard_size, (i + 1) * shard_size); each is written atomically and recorded with its index range and sha256 in
`shards.json`, so a killed run resumes where it stopped: finished shards are checked and skipped. Shard bytes
depend on (export, seed, labels, shard size, format) alone, not on the run that wrote them (fixed timestamps and
owners in the archives), so a resumed run's shards equal an uninterrupted run's byte for byte. For the same reason
a shards.json entry that does not match the plan or its file on disk is dropped and its shard written again:
the record is rebuilt from the shards that are intact, and says "complete" only when every shard of the plan is.

Formats: `npz` (images uint8 (k, h, w, c), index int64 (k,), labels int64 (k,) for conditional models; stored
uncompressed, fastest), `tar` (WebDataset: `{key}.png` + `{key}.json` with seed, index and label per image), `png`
(a folder per shard, one PNG per image).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, UserError
from ..formats.files import MARK, atomic_dir, atomic_path, atomic_write_text, owned, sha256, sweep
from ..formats.images import png, to_uint8
from ..formats.labels import default_labels
from ..formats.names import check_name
from ..formats.validate import Fields
from ..formats.vocabulary import check_seed
from ..formats.latents import latents
from .sampler import Sampler

FORMATS = ("npz", "tar", "png")
MANIFEST = "shards.json"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: archives without the time they were written


@dataclass
class Plan:
    n: int
    seed: int
    label: int | None  # one label for every image; None: k % classes for conditional models
    format: str
    shard_size: int

    def shards(self) -> list[tuple[int, int]]:
        return [(start, min(self.shard_size, self.n - start)) for start in range(0, self.n, self.shard_size)]


def write_shards(export_dir: str | Path, out: str | Path, plan: Plan, backend: str = "auto", device: str = "auto",
                 precision: str = "fp32", progress: bool = True, log=print, ray_workers: int = 0) -> dict:
    """Write (or finish) the shards of `plan` into `out`; returns the shards manifest. With ray_workers > 0 the
    shards are written by that many Ray actors (a local Ray instance, or RAY_ADDRESS's cluster, whose workers see
    `out`), each with its own Sampler: the same bytes as a local run."""
    out = Path(out)
    _check(plan)
    _check_out(out)
    with Sampler(export_dir, backend=backend, device=device, precision=precision) as sampler:
        classes = sampler.config["num_classes"]
        if plan.label is not None:
            sampler.check_labels(plan.label, 1)  # a label this generator has
        header = {"export": sampler.manifest["name"] if sampler.manifest else str(export_dir),
                  "weights": _identity(sampler), "seed": plan.seed, "n": plan.n, "shard_size": plan.shard_size,
                  "format": plan.format, "labels": plan.label if plan.label is not None else
                  ("k % num_classes" if classes else None),
                  "backend": sampler.info["backend"], "precision": precision}  # shards of one run compute alike
        done, dropped = _checked_entries(out, plan, _start(out, header))
        record = {**header, "shards": [done[start] for start in sorted(done)], "complete": False}
        todo = [(start, count) for start, count in plan.shards() if start not in done]
        _check_targets(out, plan, todo)
        if dropped:
            log(dropped[0] + (f" ({len(dropped) - 1} more entries dropped likewise)" if len(dropped) > 1 else ""))
        # the checked record replaces the one found before any shard is written: a stale "complete" or an entry
        # for a missing file never outlives this line, even if this run is killed
        atomic_write_text(out / MANIFEST, json.dumps(record, indent=1) + "\n")
        if done:
            log(f"resuming {out}: {len(done)} shard(s) done and checked, {len(todo)} to write")
        from tqdm.auto import tqdm

        bar = tqdm(total=plan.n, initial=plan.n - sum(c for _, c in todo), unit="img", disable=not progress,
                   desc="generate")
        started, written = time.perf_counter(), 0
        shards = _on_ray(export_dir, out, plan, todo, ray_workers, backend, device, precision) if ray_workers else \
            (write_shard(sampler, out, plan, start, count) for start, count in todo)
        try:
            for entry in shards:
                record["shards"] = sorted([*record["shards"], entry], key=lambda s: s["start"])
                atomic_write_text(out / MANIFEST, json.dumps(record, indent=1) + "\n")
                written += entry["count"]
                bar.update(entry["count"])
        finally:
            bar.close()
        elapsed = time.perf_counter() - started
        record["complete"] = [s["start"] for s in record["shards"]] == [start for start, _ in plan.shards()]
        atomic_write_text(out / MANIFEST, json.dumps(record, indent=1) + "\n")
        rate = f", {written / elapsed:,.0f} images/s" if written and elapsed > 0 else ""
        log(f"wrote {written} images in {len(todo)} shard(s) to {out} ({plan.format}{rate}); "
            f"{plan.n} images in {len(record['shards'])} shard(s) in all")
        return record


def write_shard(sampler: Sampler, out: Path, plan: Plan, start: int, count: int) -> dict:
    """Compute images start..start+count-1 and write their shard; returns its shards.json entry."""
    z = latents(plan.seed, count, sampler.config["latent_dim"], start, sampler.config.get("latent_distribution"))
    labels = _labels(plan, sampler.config["num_classes"], start, count)
    images = sampler.run(z, labels)
    if images.dtype != np.uint8:  # a float export: the same conversion as the uint8 graph
        images = to_uint8(images, sampler.config["value_range"])
    return _write_shard(out, plan, start, images, labels)


def _on_ray(export_dir, out: Path, plan: Plan, todo, workers: int, backend, device, precision):
    """Shards written by Ray actors, each holding a Sampler; entries yielded as shards finish."""
    try:
        import ray
    except ImportError as e:
        raise UserError(f"--ray needs Ray ({e}); pip install 'gandeploy[ray]'") from None

    source, target = str(Path(export_dir).resolve()), out.resolve()  # workers run in folders of their own

    from .device import cuda_device_count

    gpus = 1 if device.startswith("cuda") or (device == "auto" and cuda_device_count()) else 0

    @ray.remote(num_gpus=gpus)  # Ray hides GPUs from actors that ask for none
    class Writer:
        def __init__(self):
            self.sampler = Sampler(source, backend=backend, device=device, precision=precision)

        def write(self, start: int, count: int) -> dict:
            return write_shard(self.sampler, target, plan, start, count)

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    pool = ray.util.ActorPool([Writer.remote() for _ in range(min(workers, max(1, len(todo))))])
    yield from pool.map_unordered(lambda actor, job: actor.write.remote(*job), todo)


def _check(plan: Plan) -> None:
    if plan.format not in FORMATS:
        raise UserError(f"--format {plan.format!r}: expected one of {', '.join(FORMATS)}")
    if not 1 <= plan.n <= 10**10:
        raise UserError(f"--n {plan.n}: expected 1 to 10,000,000,000 images")
    if not 1 <= plan.shard_size <= 10**6:
        raise UserError(f"--shard-size {plan.shard_size}: expected 1 to 1,000,000 images per shard")
    check_seed(plan.seed, "--seed")


def _identity(sampler: Sampler) -> str | None:
    """What the images come from: the ONNX file's checksum of an export (a re-export changes it)."""
    artifacts = (sampler.manifest or {}).get("artifacts", {})
    entry = artifacts.get("generator.onnx") or artifacts.get("generator/model.safetensors")
    return entry["sha256"] if entry else None


def _check_out(out: Path) -> None:
    """--out is a folder, or a path where one can be made: a link to nothing or a path under a file is one line."""
    if out.is_symlink() and not out.exists():
        raise UserError(f"--out {out} is a link to {os.readlink(out)}, which does not exist; choose another --out "
                        f"or make the folder it points to")
    for folder in [out, *out.parents]:  # the nearest one that exists must be a folder
        if folder.exists():
            if not folder.is_dir():
                where = "is a file" if folder == out else f"is under {folder}, which is a file"
                raise UserError(f"--out {out} {where}, not a folder; choose another --out")
            return


def _start(out: Path, header: dict) -> list:
    """The shard entries (unchecked) a killed run of the same plan left in `out`; [] for a new or empty folder."""
    path = out / MANIFEST
    if path.is_file():
        try:
            record = json.loads(path.read_text())
            ok = isinstance(record, dict) and isinstance(record.get("shards"), list)
        except (OSError, ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise UserError(f"{path} is damaged; move {out} away (or delete it) and generate again")
        different = [k for k, v in header.items() if record.get(k) != v]
        if different:
            k = different[0]
            raise UserError(f"--out {out} holds another generation ({k} {record.get(k)!r}, now {header[k]!r}); "
                            f"choose another --out, or generate with the same settings to finish it")
        sweep(out)
        return record["shards"]
    # a folder of ours without shards.json: a run killed before it wrote one, or one whose record was deleted
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not owned(out, "shards"):
        raise UserError(f"--out {out} is not empty and holds no {MANIFEST}: nothing there is replaced; choose an "
                        f"empty or new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARK).write_text(json.dumps({"kind": "shards", "written_by": "gandeploy"}) + "\n")
    except OSError as e:
        raise UserError(f"--out {out}: cannot make the folder there ({e.strerror}); choose another --out") from None
    sweep(out)
    return []


def _checked_entries(out: Path, plan: Plan, entries: list) -> tuple[dict[int, dict], list[str]]:
    """(start -> entry, why others were dropped) for the entries of shards.json: kept if they match the plan and
    the files on disk, else dropped and their shards written again. The images are deterministic, so nothing is
    lost, and the record that comes out lists exactly the plan's shards, each once, each checked."""
    f = Fields(str(out / MANIFEST), "dropped; shards without a valid entry are written again")
    done, dropped = {}, []
    for k, entry in enumerate(entries):
        try:
            entry = _check_entry(f, f"shards[{k}]", plan, entry)
            if entry["start"] in done:
                f.fail(f"shards[{k}].start", f"{entry['start']} is listed twice")
            problem = _disk_problem(out / entry["file"], plan.format, entry["sha256"])
            if problem:
                f.fail(f"shards[{k}].file", f"{entry['file']} {problem}")
            done[entry["start"]] = entry
        except ArtifactError as e:
            dropped.append(str(e))
    return done, dropped


def _check_entry(f: Fields, field: str, plan: Plan, entry) -> dict:
    """One entry against the plan: it starts on a shard boundary inside 0..n-1, holds that shard's image count and
    names that shard's file. Returns it as generate writes it (other keys dropped)."""
    entry = f.obj(entry, field)
    start = f.integer(f.get(entry, "start", f"{field}.start"), f"{field}.start", 0, plan.n - 1)
    if start % plan.shard_size:
        f.fail(f"{field}.start", f"{start} is not on a shard boundary (a multiple of {plan.shard_size})")
    count = f.integer(f.get(entry, "count", f"{field}.count"), f"{field}.count", 1, plan.shard_size)
    if count != min(plan.shard_size, plan.n - start):
        f.fail(f"{field}.count", f"{count}, but the shard at {start} holds {min(plan.shard_size, plan.n - start)}")
    file = check_name(f.text(f.get(entry, "file", f"{field}.file"), f"{field}.file"), f"{f.where}: {field}.file")
    if file != _shard_name(plan, start):
        f.fail(f"{field}.file", f"{file!r}, but images {start}.. go to {_shard_name(plan, start)!r}")
    digest = f.text(f.get(entry, "sha256", f"{field}.sha256"), f"{field}.sha256")
    return {"file": file, "start": start, "count": count, "sha256": digest}


def _disk_problem(path: Path, fmt: str, digest: str) -> str | None:
    """Why the shard at `path` is not the one its entry describes; None when it is (same sha256, right kind)."""
    if path.is_symlink():
        return "is a link"  # generate writes files and folders, never links: where one leads is not ours
    if not path.exists():
        return "is missing"
    if fmt == "png" and not path.is_dir():
        return "is not a folder"
    if fmt != "png" and not path.is_file():
        return "is a folder, not a file" if path.is_dir() else "is not a file"
    try:
        found = _folder_digest(path) if fmt == "png" else sha256(path)
    except OSError as e:
        return f"is unreadable ({e.strerror})"
    return None if found == digest else "changed since it was written (sha256 differs)"


def _check_targets(out: Path, plan: Plan, todo) -> None:
    """Before any work: a folder where a shard file (or shards.json) goes is not ours to delete: one line."""
    targets = [out / MANIFEST] + ([] if plan.format == "png" else [out / _shard_name(plan, s) for s, _ in todo])
    for path in targets:
        if path.is_dir() and not path.is_symlink():
            raise UserError(f"{path} is a folder where generate writes a file; move it away and generate again")


def _labels(plan: Plan, classes: int, start: int, count: int) -> np.ndarray | None:
    if not classes:
        return None
    if plan.label is not None:
        return np.full(count, plan.label, dtype=np.int64)
    return default_labels(count, classes, start)


def _key(seed: int, index: int) -> str:
    return f"s{seed}-{index:010d}"  # WebDataset keys: no dots; the extension names the field


def _shard_name(plan: Plan, start: int) -> str:
    number = start // plan.shard_size
    return f"shard-{number:06d}" if plan.format == "png" else f"shard-{number:06d}.{plan.format}"


def _write_shard(out: Path, plan: Plan, start: int, images: np.ndarray, labels) -> dict:
    index = np.arange(start, start + len(images), dtype=np.int64)
    name = _shard_name(plan, start)
    if plan.format == "png":
        if (out / name).is_symlink() or ((out / name).exists() and not (out / name).is_dir()):
            (out / name).unlink()  # atomic_dir moves what it replaces aside and removes folders only: no .old-* left
        with atomic_dir(out / name) as tmp:
            for k, image in zip(index, images):
                (tmp / f"{_key(plan.seed, int(k))}.png").write_bytes(png(image))
        digest = _folder_digest(out / name)
    else:
        data = _npz(images, index, labels) if plan.format == "npz" else _tar(plan.seed, images, index, labels)
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(data)
        digest = sha256(out / name)
    return {"file": name, "start": start, "count": len(images), "sha256": digest}


def _npz(images, index, labels) -> bytes:
    """An .npz (np.load reads it) with fixed timestamps, uncompressed: the same bytes for the same arrays."""
    arrays = {"images": images, "index": index, **({"labels": labels} if labels is not None else {})}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            data = io.BytesIO()
            np.lib.format.write_array(data, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH), data.getvalue())
    return buffer.getvalue()


def _tar(seed: int, images, index, labels) -> bytes:
    """WebDataset layout: `{key}.png` and `{key}.json` side by side, in index order, no times or owners."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for k, image in enumerate(images):
            key = _key(seed, int(index[k]))
            meta = {"seed": seed, "index": int(index[k]),
                    **({"label": int(labels[k])} if labels is not None else {})}
            for name, data in ((f"{key}.png", png(image)), (f"{key}.json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _folder_digest(folder: Path) -> str | None:
    """sha256 of a png shard: its files' names and contents; None if it holds anything but plain files."""
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.name != MARK):
        if file.is_symlink() or not file.is_file():
            return None
        digest.update(file.name.encode() + b"\0" + bytes.fromhex(sha256(file)))
    return digest.hexdigest()


generate = write_shards  # the name `gandeploy generate` gives it; write_shards says which of the three
