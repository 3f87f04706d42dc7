"""Output that is either complete or absent: write into a sibling temp dir or file, rename
at the end."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path


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


def atomic_write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


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
    durable_write_text(path, json.dumps(data, indent=1) + "\n")


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
