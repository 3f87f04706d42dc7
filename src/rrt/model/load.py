"""Loading saved HF model directories (base or recursive) with one-line errors that name
the directory: what every command that takes a model does first."""
from __future__ import annotations

import re
import sys
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
    """Load a saved HF model (base or recursive), fp32 by default. Weights that do not cover
    the config (a partial copy, weights of another config) are a UsageError naming the
    directory and what is missing (`missing_weights`): plain `from_pretrained` would fill
    them in (`RecursiveForCausalLM._initialize_missing_keys`) and run a different model.
    Every `rrt` command, and training, loads its models here."""
    load_config_dir(path, what)
    hf_logging.disable_progress_bar()  # a small model loads in seconds; keep errors on one line
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its multi-line load report: the error below says it in one
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True)
    except Exception as e:  # corrupt weights: name the directory
        raise UsageError(f"cannot load {what} from {path}: {first_line(e)}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        raise UsageError(f"{what} {path}: {missing_weights(model, info['missing_keys'], weight_files(path))}")
    if info["unexpected_keys"]:
        print(f"warning: {what} {path}: {len(info['unexpected_keys'])} tensors in its weights are not in its config, "
              f"ignored ({_examples(info['unexpected_keys'])})", file=sys.stderr)
    return model


def weight_files(path: str | Path) -> list[str]:
    """The weight files of a model directory, by name."""
    return sorted(p.name for p in Path(path).iterdir() if p.suffix in (".safetensors", ".bin"))


def _natural(key: str) -> list:
    """Sort key putting base.model.layers.2 before base.model.layers.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _examples(keys, shown: int = 2) -> str:
    keys = sorted(keys, key=_natural)
    return ", ".join(keys[:shown]) + (", …" if len(keys) > shown else "")


KINDS = ("LoRA", "per-depth", "shared-layer", "other")


def tensor_kind(key: str) -> str:
    """What a parameter of a (recursive) model is, for messages: "LoRA" (a depth's A/B),
    "per-depth" (a depth's own bias or norm), "shared-layer" (the K shared layers), else
    "other" (embeddings, final norm, head, a plain model's layers)."""
    if key.endswith((".lora_A", ".lora_B")):
        return "LoRA"
    if ".linears." in key or ".norms." in key:
        return "per-depth"
    if key.startswith("recursive_block."):
        return "shared-layer"
    return "other"


def missing_weights(model, missing, files: list[str]) -> str:
    """One line: how many tensors of each kind (`tensor_kind`) the weight files lack, of
    how many the model has, and the first ones, e.g. "48 of 96 LoRA tensors missing from
    model.safetensors (base.model.layers.0.linears.mlp__down_proj.lora_A, …)"."""
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})  # saved once, as their source
    totals: dict[str, int] = {}
    for key in model.state_dict():
        if key not in tied:
            totals[tensor_kind(key)] = totals.get(tensor_kind(key), 0) + 1
    counts: dict[str, int] = {}
    for key in missing:
        counts[tensor_kind(key)] = counts.get(tensor_kind(key), 0) + 1
    parts = [f"{counts[kind]} of {totals.get(kind, counts[kind])} {kind} tensors" for kind in KINDS if kind in counts]
    return (f"{', '.join(parts)} missing from {', '.join(files) or 'its weights'} ({_examples(missing)}); "
            "a partial copy, or weights of another config")


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
