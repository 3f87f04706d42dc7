"""Checkpoints and the run's identity: which checkpoint a rerun resumes from, and the
settings that must not change across a resume (`train_config.json`)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..io import atomic_write_json

CHECKPOINTS = "checkpoints"
# Settings that define a run: a resume with any of them changed would not continue it.
# warmup_steps is the resolved count (from warmup_ratio unless given). The memory switches
# (gradient_checkpointing, loss_chunk_tokens) are left out on purpose: they change no number,
# so a run may be resumed with them toggled (e.g. after running out of memory).
RUN_KEYS = ("model_dir", "data_dir", "max_tokens", "batch_tokens", "micro_batch_size", "lr", "warmup_steps",
            "min_lr_ratio", "weight_decay", "adam_betas", "seed", "teacher_dir", "kd_kind", "kd_weight",
            "kd_temperature", "bf16", "deepspeed", "world_size")


def step_of(path: Path) -> int:
    """The step of a `checkpoint-<step>` directory (-1 for anything else)."""
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint. Trainer writes trainer_state.json last, so a
    checkpoint without it was cut off while saving: it is removed (it cannot be resumed
    from, and would otherwise be taken for the newest)."""
    if not checkpoints.is_dir():
        return None
    candidates = sorted((p for p in checkpoints.glob("checkpoint-*") if step_of(p) >= 0), key=step_of)
    for path in reversed(candidates):
        if (path / "trainer_state.json").is_file():
            return path
        if is_main_process():
            shutil.rmtree(path, ignore_errors=True)
    return None


def is_main_process() -> bool:
    """Rank 0 of a torchrun/deepspeed launch (or the only process): the one that writes."""
    return int(os.environ.get("RANK", "0")) == 0


def check_same_run(out_dir: Path, config: dict, resuming: bool) -> None:
    """Record the run's settings; refuse to resume checkpoints made with other settings."""
    path = out_dir / "train_config.json"
    run = {k: config[k] for k in RUN_KEYS}
    if resuming and path.is_file():
        before = json.loads(path.read_text())
        changed = [k for k in RUN_KEYS if before.get(k) != run[k]]
        if changed:
            k = changed[0]
            raise ValueError(f"{out_dir / CHECKPOINTS} holds a run with {k}={before.get(k)!r}, not {run[k]!r}: "
                             f"remove it or use another output directory")
    if is_main_process():
        atomic_write_json(path, run)


def tokens_in_checkpoint(checkpoint: Path | None) -> int:
    if checkpoint is None:
        return 0
    return json.loads((checkpoint / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0)
