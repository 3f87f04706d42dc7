"""Checks shared by the handlers: numbers, output paths, weights files, tokens of the
model's own tokenizer, and removing what a failed command created. Every failure is a
`UsageError` naming the flag and the value."""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import sys
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


@functools.lru_cache(maxsize=8)
def _model_fingerprint(model_dir: str) -> str | None:
    from transformers import AutoTokenizer  # here: `rrt launch` and `rrt report` need none of this

    from ..data.tokenizer import tokenizer_fingerprint
    from ..model.load import has_tokenizer

    if not has_tokenizer(model_dir):
        return None
    return tokenizer_fingerprint(AutoTokenizer.from_pretrained(model_dir))


def same_tokenizer(model_dir: str | Path, model_flag: str, data_dir: str | Path, data_label: str) -> None:
    """Tokens written by `rrt tokenize` are refused (one line naming both tokenizers) when
    the model's tokenizer is not the one that made them, by fingerprint
    (`rrt.data.tokenizer.tokenizer_fingerprint`), not only by vocabulary size: another
    tokenizer's ids still index the embeddings and give numbers, wrong ones. Tokens that
    record no fingerprint (written before it was recorded), or a model without a tokenizer,
    are not checked: a one-line warning says so. Other datasets record none: not checked.
    `data_label` names the tokens in messages (e.g. "--data DIR")."""
    from ..data.blocks import recorded_tokenizer

    recorded = recorded_tokenizer(data_dir)
    if recorded is None:
        return
    theirs, ours = recorded.get("fingerprint"), _model_fingerprint(str(model_dir))
    if theirs is None or ours is None:
        why = (f"{data_label} records no tokenizer fingerprint (tokenized before it was recorded)"
               if theirs is None else f"{model_flag} {model_dir} has no tokenizer")
        print(f"warning: {why}: its tokens are not checked against {model_flag}'s tokenizer", file=sys.stderr)
        return
    if theirs != ours:
        raise UsageError(f"{data_label} was tokenized by {recorded.get('name', '?')} ({theirs[:19]}…), "
                         f"not by {model_flag} {model_dir}'s tokenizer ({ours[:19]}…): retokenize with it, or "
                         "give the model that goes with these tokens")


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
