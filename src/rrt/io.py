"""Output that is either complete or absent: write into a sibling temp dir or file, rename
at the end."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
from pathlib import Path

from .errors import NonFiniteError


def atomic_write_text(path: str | Path, text: str, durable: bool = False) -> None:
    """Write `text` to `path` through a temp file in the same directory (unique, so that
    concurrent writers do not collide) and an atomic rename; parents are created.
    durable: also fsync the temp file before the rename and the directory after it, so that
    after a crash or power loss `path` is either the old file or all of `text`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, unique temp file beside `path`, opened for writing. Created with mode 0666 so
    that the kernel applies the umask, as for any other file the pipeline writes (mkstemp's
    0600 would survive the rename and make results unreadable to collaborators)."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def non_finite(data, where: str = "") -> list[tuple[str, float]]:
    """(key path, value) of every NaN or infinite float in nested dicts and lists, in
    order; paths read like `ppl.wikitext.ppl` or `exits.ppl.x.exits[1].nll`."""
    if isinstance(data, float):
        return [] if math.isfinite(data) else [(where or "the value", data)]
    if isinstance(data, dict):
        return [bad for k, v in data.items() for bad in non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(data, (list, tuple)):
        return [bad for i, v in enumerate(data) for bad in non_finite(v, f"{where}[{i}]")]
    return []


def check_finite(data, what: str) -> None:
    """NonFiniteError naming the first NaN or infinite number in `data` (of `what`), and
    how many there are."""
    bad = non_finite(data)
    if bad:
        key, value = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise NonFiniteError(f"{what}: {key} is {value}{more}; a result must be a finite number")


def json_text(data, what: str = "JSON") -> str:
    """`data` as strict JSON (indent 1, newline-terminated): NaN and infinities, which
    json.dumps would write as the non-JSON tokens NaN/Infinity, are a NonFiniteError
    naming the key."""
    check_finite(data, what)
    return json.dumps(data, indent=1, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, data) -> None:
    """Strict JSON (`json_text`), atomically; nothing is written when a number is not finite."""
    atomic_write_text(path, json_text(data, str(path)))


@contextlib.contextmanager
def atomic_output_dir(out: str | Path):
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"output directory {out} already exists")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(out)


# --- durable files: for what a crash or power loss must never leave half-written ---------
def fsync_dir(path: str | Path) -> None:
    """Make the entries of directory `path` (a file renamed or created in it) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write_text(path: str | Path, text: str) -> None:
    atomic_write_text(path, text, durable=True)


def durable_write_json(path: str | Path, data) -> None:
    durable_write_text(path, json_text(data, str(path)))


def file_sha256(path: str | Path, fsync: bool = False, chunk: int = 1 << 22) -> tuple[int, str]:
    """(size in bytes, hex sha256) of a file, read once; with fsync its data is also flushed
    to disk (a file another writer left in the page cache)."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
        if fsync:
            os.fsync(f.fileno())
    return size, h.hexdigest()
