"""Atomic writes and checked reads, so no reader ever sees half a file.

Every cached ``.pth`` holds ``{"meta", "payload", "digest"}``: ``meta`` names
the settings that produced it, ``digest`` is a SHA-256 over the payload's
tensors and values, so truncation (load fails) and bit rot (digest differs)
are both caught. The file stays a plain ``torch.load``-able dict. JSON caches
(the references' reliance figures) hold the same three keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from filelock import FileLock

from xilsweep.errors import DataError

log = logging.getLogger(__name__)


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _feed(h, item)
    else:
        h.update(repr(obj).encode())


def digest(obj) -> str:
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Files are readable as the user's umask allows (a lab's shared project folder), not the 0600 of
# the temporary files they start as.
FILE_MODE = 0o666 & ~current_umask()


def atomic_write_bytes(data: bytes, path: Path) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it; DataError
    (naming the file) when the folder cannot be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise DataError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(obj, path: Path) -> None:
    atomic_write_bytes((json.dumps(obj, indent=2, default=str) + "\n").encode(), path)


def atomic_torch_save(payload, path: Path, meta=None) -> None:
    buffer = io.BytesIO()
    torch.save({"meta": meta, "payload": payload, "digest": digest(payload)}, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def save_state_dict(model: torch.nn.Module, path: Path) -> None:
    """A model's weights as a plain ``torch.load``-able state dict, written atomically."""
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def read_checked(path: Path):
    """(meta, payload) of a file written by ``atomic_torch_save``; DataError if damaged."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"{path} is unreadable (truncated or corrupt): {type(e).__name__}: {e}") from e
    if not isinstance(blob, dict) or set(blob) != {"meta", "payload", "digest"}:
        raise DataError(f"{path} is not a xilsweep file (expected meta, payload and digest)")
    if digest(blob["payload"]) != blob["digest"]:
        raise DataError(f"{path} is corrupt: its content does not match its checksum")
    return blob["meta"], blob["payload"]


def checked_torch_load(path: Path, expect_meta):
    """Payload of a cache file, or None when it is missing, stale or damaged.

    A damaged cache file is reported and rebuilt rather than used.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        meta, payload = read_checked(path)
    except DataError as e:
        log.warning("%s; rebuilding it", e)
        return None
    if meta != expect_meta:
        log.warning("%s was made with other settings; rebuilding it", path)
        return None
    return payload


def atomic_write_checked_json(payload, path: Path, meta) -> None:
    """A JSON cache file in the layout of the ``.pth`` ones: ``meta``, ``payload``, ``digest``."""
    atomic_write_json({"meta": meta, "payload": payload, "digest": digest(payload)}, path)


def checked_json_load(path: Path, expect_meta):
    """Payload of a JSON cache file written by ``atomic_write_checked_json``, or None when it
    is missing, stale or damaged (reported, as for ``checked_torch_load``, and rebuilt)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        blob = json.loads(path.read_text())
        if not isinstance(blob, dict) or set(blob) != {"meta", "payload", "digest"}:
            raise ValueError("not a xilsweep file (expected meta, payload and digest)")
        if digest(blob["payload"]) != blob["digest"]:
            raise ValueError("its content does not match its checksum")
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning("%s is damaged (%s); rebuilding it", path, e)
        return None
    if blob["meta"] != expect_meta:
        log.warning("%s was made with other settings; rebuilding it", path)
        return None
    return blob["payload"]


def build_lock(path: Path) -> FileLock | contextlib.nullcontext:
    """An exclusive lock beside ``path``, held (``with build_lock(path):``) while
    building it, so parallel jobs wanting the same cached file build it once and
    the others wait, then read it. In a folder this user cannot write (a shared,
    read-only data root) nobody here can build, so a complete cache is read without one."""
    lock_file = Path(path).with_name(Path(path).name + ".lock")
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot write {lock_file.parent}: {e.strerror or e}") from e
    if not os.access(lock_file.parent, os.W_OK):
        return contextlib.nullcontext()
    return FileLock(lock_file, mode=FILE_MODE)
