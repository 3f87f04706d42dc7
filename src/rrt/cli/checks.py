"""Checks shared by the handlers: numbers, output paths, weights files, tokens of the
model's own tokenizer, and removing what a failed command created. Every failure is a
`UsageError` naming the flag and the value."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path

from safetensors import safe_open

from ..errors import UsageError, first_line


def at_least(flag: str, value: int | None, low: int) -> None:
    """An integer flag (None: not given) must be >= low."""
    if value is not None and value < low:
        raise UsageError(f"{flag} must be >= {low}, got {value}")


def positive(flag: str, value: float | None) -> None:
    """A finite number > 0 (None: not given)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be a finite number > 0, got {value}")


def non_negative(flag: str, value: float | None) -> None:
    """A finite number >= 0 (None: not given)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise UsageError(f"{flag} must be a finite number >= 0, got {value}")


def in_unit_interval(flag: str, value: float | None) -> None:
    """A number in [0, 1] (None: not given); NaN is not."""
    if value is not None and not 0 <= value <= 1:
        raise UsageError(f"{flag} must be in [0, 1], got {value}")


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def _check_parent(flag: str, path: Path) -> None:
    """The nearest existing ancestor of `path` must be a writable directory (the missing
    ones are created)."""
    anchor = _nearest_existing(path.parent if str(path.parent) else Path("."))
    if not anchor.is_dir():
        raise UsageError(f"{flag} {path}: {anchor} is a file, not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write in {anchor}")


def new_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """An output directory that must not exist yet, and can be created."""
    path = Path(path)
    if path.exists():
        raise UsageError(f"{flag} {path} already exists" + ("" if path.is_dir() else " (as a file)"))
    _check_parent(flag, path)
    return path


def output_dir(path: str | Path, flag: str) -> Path:
    """An output directory that may exist (then as a directory) or be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a directory")
    if not path.exists():
        _check_parent(flag, path)
    return path


def output_file(path: str | Path, flag: str) -> Path:
    """An output file that may be overwritten, but not a directory."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory, not a file")
    _check_parent(flag, path)
    return path


def first_missing(path: str | Path) -> Path | None:
    """The topmost ancestor of `path` (or `path` itself) that does not exist: what a
    command writing `path` creates. None if `path` exists."""
    path = Path(path).absolute()
    if path.exists():
        return None
    missing = path
    for p in path.parents:
        if p.exists():
            break
        missing = p
    return missing


@contextlib.contextmanager
def removed_on_error(*paths: str | Path, keep=None):
    """On any error inside, remove what this invocation created for `paths`: each one's
    topmost ancestor that did not exist on entry. Nothing that existed before is touched.
    `keep(path)` may return True to spare a path (e.g. resumable training checkpoints)."""
    created = [(Path(p), first_missing(p)) for p in paths]
    try:
        yield
    except BaseException:
        for path, root in created:
            if root is not None and root.exists() and not (keep and keep(path)):
                if root.is_dir():
                    shutil.rmtree(root, ignore_errors=True)
                else:
                    root.unlink(missing_ok=True)
        raise


def check_weights(path: str | Path, flag: str) -> None:
    """The weights of a saved HF model are present and their headers readable (a truncated
    or corrupt safetensors file fails here, naming it, without loading any tensor)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    shards: list[Path] = []
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"cannot load {flag} from {path}: {index.name}: {first_line(e)}") from None
        shards = [path / n for n in names]
        for shard in shards:
            if not shard.is_file():
                raise UsageError(f"cannot load {flag} from {path}: {index.name} lists {shard.name}, which is missing")
    elif (path / "model.safetensors").is_file():
        shards = [path / "model.safetensors"]
    elif not list(path.glob("pytorch_model*.bin")):
        raise UsageError(f"{flag} directory {path} has no weights (model.safetensors or pytorch_model.bin)")
    for shard in shards:
        try:
            with safe_open(str(shard), "pt") as f:
                f.keys()
        except Exception as e:
            raise UsageError(f"cannot load {flag} from {path}: {shard.name}: {first_line(e)}") from None


def resolved_config(path: str | Path) -> dict:
    """The workflow's resolved config (a JSON mapping, as the `resolved_config` rule writes it)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--resolved-config {path} " + ("is a directory, not a JSON file" if path.is_dir()
                                                         else "does not exist"))
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--resolved-config {path} is not JSON: {first_line(e)}") from None
    if not isinstance(config, dict) or "variants" not in config:
        raise UsageError(f"--resolved-config {path} is not a workflow config (a mapping with a variants key)")
    return config
