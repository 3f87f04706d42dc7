"""Loading saved HF model directories (base or recursive) with one-line errors that name
the directory: what every command that takes a model does first."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from ..errors import UsageError, first_line
from . import modeling  # noqa: F401  registers the `recursive` model type

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Files a model directory we write never holds: pickles (loading one runs arbitrary code).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")


def load_config_dir(path: str | Path, what: str = "model"):
    """The config of a saved HF model. `what` names the flag in errors (e.g. "--base")."""
    path = Path(path)
    if not path.is_dir():
        kind = "is a file, not a directory" if path.exists() else "does not exist"
        raise UsageError(f"{what} directory {path} {kind}")
    if not (path / "config.json").is_file():
        raise UsageError(f"{what} directory {path} has no config.json")
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as e:
        raise UsageError(f"cannot read {path / 'config.json'}: {first_line(e)}") from e


def load_model_dir(path: str | Path, what: str = "model", dtype=torch.float32):
    """Load a saved HF model (base or recursive), fp32 by default."""
    load_config_dir(path, what)
    hf_logging.disable_progress_bar()  # a small model loads in seconds; keep errors on one line
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as e:  # corrupt weights: name the directory
        raise UsageError(f"cannot load {what} from {path}: {first_line(e)}") from e


def has_tokenizer(model_dir: str | Path) -> bool:
    return any((Path(model_dir) / f).is_file() for f in TOKENIZER_FILES)


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    """Save `src`'s tokenizer into `dst` when `src` has one (converted and trained models
    keep their base's tokenizer, so lm-eval and generate() can use them as they are)."""
    if has_tokenizer(src):
        AutoTokenizer.from_pretrained(src).save_pretrained(dst)


def pickles_in(model_dir: str | Path) -> list[str]:
    """The pickle files (by suffix) in a model directory, sorted."""
    return sorted(p.name for p in Path(model_dir).iterdir() if p.suffix in PICKLE_SUFFIXES)
