"""Files we write: atomic writes (a crash leaves the old file or the new one, never half of either) and checksums.
json + the standard library only: the serving side uses this too."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path

# ---- atomic writes -------------------------------------------------------------------------------------------


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}-{os.getpid()}-{secrets.token_hex(4)}")


def _publish(file: Path) -> None:
    """fsync, and the permissions the umask gives (safetensors writes 0600)."""
    os.chmod(file, 0o666 & ~_UMASK)
    with open(file, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def _naming(path: Path):
    """A full disk while writing `path` names it: a write() error carries no file name of its own."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or e.filename:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        with _naming(path):
            yield tmp
            _publish(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


MARK = ".gandeploy"  # in every folder gandeploy writes whole: what it is, so only such folders are ever replaced
# what folders of each kind held before marks existed: recognised as ours when nothing else is inside
_LEGACY = {"generator": ({"config.json", "model.safetensors"}, ()),
           "export": ({"manifest.json", "generator.onnx", "generator.fp16.onnx", "generator", "reference.npz"},
                      (".plan",))}


def owned(path: Path, kind: str) -> bool:
    """Whether `path` is a folder of `kind` that gandeploy wrote (its mark, or a legacy layout of ours)."""
    mark = path / MARK
    if mark.is_file():
        try:
            return json.loads(mark.read_text()).get("kind") == kind
        except (ValueError, UnicodeDecodeError, AttributeError):
            return False
    names, suffixes = _LEGACY.get(kind, (set(), ()))
    entries = [e.name for e in path.iterdir()]
    return bool(entries) and all(n in names or n.endswith(suffixes or ("\0",)) for n in entries) and \
        any(n in names for n in entries)


def check_replaceable(path: Path, kind: str) -> None:
    """Refuse to replace anything but an empty folder or a folder of `kind` that gandeploy wrote."""
    from ..errors import ArtifactError

    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise ArtifactError(f"refusing to replace {path}: it is a {'link' if path.is_symlink() else 'file'}, not a "
                            f"folder gandeploy wrote; choose another output folder")
    if any(path.iterdir()) and not owned(path, kind):
        raise ArtifactError(f"refusing to replace {path}: gandeploy did not write it (no {MARK} mark of a {kind} "
                            f"folder inside); choose another output folder, or move it away yourself")


@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: str | None = None):
    """Yield a temporary folder beside `path`; on success it takes the place of `path` (old contents dropped).
    With `kind`, the folder is marked as ours, and an existing `path` is replaced only if it is ours too."""
    path = Path(path)
    if kind is not None:
        check_replaceable(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    tmp.mkdir()
    try:
        with _naming(path):
            if kind is not None:
                (tmp / MARK).write_text(json.dumps({"kind": kind, "written_by": "gandeploy"}) + "\n")
            yield tmp
            for file in tmp.rglob("*"):
                if file.is_file():
                    _publish(file)
        old = None
        if path.exists():
            old = path.with_name(f".old-{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)



def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_TMP = re.compile(r"^\.tmp-(?P<name>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")  # what _temp_name makes
_OLD = re.compile(r"^\.old-(?P<name>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")  # what atomic_dir moves aside


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's live process; a number no pid can be
        return True
    return True


def sweep(folder: str | Path, names=None) -> list[str]:
    """Clean up after killed writers in `folder`: their `.tmp-*` files and folders are removed, and a `.old-X-*`
    folder whose X is missing (a kill between atomic_dir's two renames) is put back as X. Only entries named as we
    name them, of processes no longer running, and, when `names` is given, only for those target names: a folder
    that is not ours (the parent of an export, say) is only ever touched for the one name we write there."""
    folder = Path(folder)
    done = []
    if not folder.is_dir():
        return done
    for entry in folder.iterdir():
        match = _TMP.match(entry.name) or _OLD.match(entry.name)
        if match is None or (names is not None and match["name"] not in names) or entry.is_symlink():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        target = folder / match["name"]
        if entry.name.startswith(".old-") and not target.exists():
            os.replace(entry, target)  # the previous version, complete: it was renamed aside whole
            done.append(f"{entry.name} -> {target.name}")
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            done.append(entry.name)
        else:
            entry.unlink(missing_ok=True)
            done.append(entry.name)
    return done
