"""Output that is either complete or absent: write into a sibling temp dir, rename at the end."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path


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
