"""What an uptraining run writes at its end: loss.csv (one row per logged step),
train_summary.json, and the final model with its tokenizer, renamed into place last so that
`final` exists only once everything is written."""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import torch
from transformers.trainer import TRAINING_ARGS_NAME

from ..io import atomic_write_json, atomic_write_text
from ..model.load import copy_tokenizer, pickles_in
from .checkpoints import CHECKPOINTS, step_of

FINAL_TMP = ".final.tmp"


def write_loss_csv(path: Path, history: list[dict], with_kd: bool, exits: int = 0) -> None:
    """One row per logged step; `tokens_seen` is Trainer's exact count (all ranks). With
    early-exit training, `ce` is the final exit's and ce_exit<b> each exit's."""
    per_exit = [f"ce_exit{b}" for b in range(1, exits + 1)]
    fields = ["step", "tokens_seen", "loss", "ce"] + (["kd"] if with_kd else []) + per_exit + ["lr"]
    buffer = io.StringIO()
    w = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for h in history:
        w.writerow({"step": h["step"], "tokens_seen": h.get("num_input_tokens_seen", ""), "loss": h["loss"],
                    "ce": h.get("ce", ""), "kd": h.get("kd", ""), "lr": h.get("learning_rate", ""),
                    **{k: h.get(k, "") for k in per_exit}})
    atomic_write_text(path, buffer.getvalue())


def save_final(trainer, model_dir, tmp: Path) -> None:
    trainer.save_model(str(tmp))  # every rank: collective under DeepSpeed, rank 0 writes
    if trainer.is_world_process_zero():
        # save_model also pickles the TrainingArguments: the final model holds safetensors,
        # configs and the tokenizer only (train_summary.json records the settings).
        (tmp / TRAINING_ARGS_NAME).unlink(missing_ok=True)
        copy_tokenizer(model_dir, tmp)
        if pickles_in(tmp):
            raise RuntimeError(f"the final model would hold pickles: {', '.join(pickles_in(tmp))}")


def summary_of(trainer, config: dict, *, steps, micro, accum, block, seconds, session_tokens, resume) -> dict:
    history = [h for h in trainer.state.log_history if "loss" in h]
    last = history[-1] if history else {}
    return {
        "steps": trainer.state.global_step, "tokens": trainer.state.num_input_tokens_seen,
        "tokens_per_step": micro * accum * block * config["world_size"], "micro_batch_size": micro,
        "gradient_accumulation": accum, "block_size": block, "planned_steps": steps,
        "seconds": round(seconds, 3), "session_tokens": session_tokens,
        "tokens_per_second": session_tokens / seconds if seconds > 0 else None,
        "resumed_from_step": step_of(resume) if resume else None,
        "final_loss": last.get("loss"), "final_ce": last.get("ce"), "final_kd": last.get("kd"),
        "threads": torch.get_num_threads(), "device": str(trainer.args.device), "config": config,
    }


def finish(trainer, out_dir: Path, model_dir, summary: dict, with_kd: bool, keep_checkpoints: bool,
           exits: int = 0) -> None:
    """loss.csv and the summary first, the final model renamed into place last: `final`
    exists only once everything is written."""
    tmp = out_dir / FINAL_TMP
    save_final(trainer, model_dir, tmp)
    if not trainer.is_world_process_zero():
        return
    history = [h for h in trainer.state.log_history if "loss" in h]
    write_loss_csv(out_dir / "loss.csv", history, with_kd, exits)
    atomic_write_json(out_dir / "train_summary.json", summary)
    tmp.rename(out_dir / "final")
    if not keep_checkpoints:
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    print(f"trained {summary['steps']} steps, {summary['tokens']:,} tokens, "
          f"{summary['tokens_per_second']:.1f} tokens/s; final loss {summary['final_loss']:.4f}; "
          f"saved to {out_dir / 'final'}")
