"""Watching a run: at every logged step (train.log_steps), rank 0 adds

    tokens_per_s        tokens of the log interval (all ranks) / its seconds
    model_flops_per_s   tokens_per_s × training FLOPs per token (`rrt plan`'s model,
                        rrt.train.budget: recomputation, teacher and exits included)
    mfu                 model_flops_per_s / (world size × the GPU's bf16 dense peak), only on a
                        GPU whose peak is known (settings.GPU_SPECS: H100 and H200, A100). A CPU has no
                        peak we could state honestly (it depends on its vector units, clock and
                        threads), so a CPU run reports the achieved model FLOP/s alone.
    eta_s               steps left × the mean seconds per step of this session

to the logged values, prints them as one line (the rule log's progress line), and hands them
on to HF's own integrations (`train.report_to`): TensorBoardCallback, writing event files in
out/tensorboard (`tensorboard --logdir results/train`), or WandbCallback (WANDB_MODE=offline
etc. are read by wandb itself). These values reach the callbacks only: Trainer's log history,
and with it loss.csv and the checkpoints, stays as it was.

A resumed run continues its event files: the writer starts with TensorBoard's purge step
(the resumed step + 1), which hides what an earlier session logged after that checkpoint, so
every step appears once.
"""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from ..settings import GPU_SPECS, TENSORBOARD_DIR, TrainSettings
from .budget import model_counts, train_flops_per_token

# A GPU's name (lower case) -> its entry in settings.GPU_SPECS. The H200 is the H100's
# compute die with more memory: the same 989 TFLOP/s bf16 dense.
PEAK_OF = {"h100": "h100", "h200": "h100", "a100": "a100"}


def gpu_peak_flops() -> tuple[float | None, str]:
    """(bf16 dense peak FLOP/s of this process's GPU, its name), or (None, its name) when no
    peak is known: a CPU run ("cpu"), or a GPU that PEAK_OF does not name. The peaks are the
    SXM parts' (a PCIe H100 is slower: its MFU reads low)."""
    if not torch.cuda.is_available():
        return None, "cpu"
    name = torch.cuda.get_device_name()
    for part, spec in PEAK_OF.items():
        if part in name.lower():
            return GPU_SPECS[spec]["peak_tflops"] * 1e12, name
    return None, name


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _flops(value: float) -> str:
    for scale, unit in ((1e15, "PFLOP/s"), (1e12, "TFLOP/s"), (1e9, "GFLOP/s"), (1e6, "MFLOP/s")):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} FLOP/s"


class RunMonitor(TrainerCallback):
    """Adds tokens_per_s, model_flops_per_s, mfu (where a peak is known) and eta_s to every
    log that carries the loss, and prints one line per log (module docstring). Must come
    before the reporting callbacks, which read the same `logs` dict."""

    def __init__(self, flops_per_token: float, world_size: int = 1, peak_flops: float | None = None,
                 device: str = "cpu"):
        self.flops_per_token, self.world_size = flops_per_token, world_size
        self.peak_flops, self.device = peak_flops, device

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time = self.last_time = time.perf_counter()
        self.start_step = state.global_step
        self.last_tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or logs is None or "loss" not in logs:
            return
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        seconds = now - self.last_time
        tokens_per_s = (tokens - self.last_tokens) / seconds if seconds > 0 else 0.0
        self.last_time, self.last_tokens = now, tokens
        steps_done = state.global_step - self.start_step
        eta = (state.max_steps - state.global_step) * (now - self.start_time) / max(steps_done, 1)
        logs["tokens_per_s"] = tokens_per_s
        logs["model_flops_per_s"] = tokens_per_s * self.flops_per_token
        if self.peak_flops:
            logs["mfu"] = logs["model_flops_per_s"] / (self.world_size * self.peak_flops)
        logs["eta_s"] = eta
        tqdm.write(self.line(state, logs))  # beside the progress bar, not through it

    def line(self, state, logs) -> str:
        """The progress line, e.g. `step 8/32 loss 9.8123 | 1,234 tokens/s | 5.67 GFLOP/s model
        (no MFU: no known peak for cpu) | ETA 0:00:42`."""
        mfu = f"MFU {logs['mfu']:.1%}" if "mfu" in logs else f"no MFU: no known peak for {self.device}"
        return (f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} | "
                f"{logs['tokens_per_s']:,.0f} tokens/s | {_flops(logs['model_flops_per_s'])} model ({mfu}) | "
                f"ETA {_clock(logs['eta_s'])}")


class ResumableTensorBoard(TensorBoardCallback):
    """HF's TensorBoardCallback writing to `log_dir`, its writer opened with the purge step
    of the step the session starts from (+1): what an earlier session logged after the
    checkpoint this one resumes from is hidden, so a resumed run's steps continue, none twice."""

    def __init__(self, log_dir: Path):
        super().__init__()
        self.logging_dir = str(log_dir)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.tb_writer is None:
            self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=state.global_step + 1)
        super().on_train_begin(args, state, control, **kwargs)


def check_report_to(report_to: str) -> None:
    """A ValueError naming train.report_to when its integration cannot run here (the value
    itself is checked by TrainSettings)."""
    if report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ValueError("train.report_to: wandb is not installed (pip install wandb), or use tensorboard or none")


def reporting_callbacks(report_to: str, out_dir: Path) -> list:
    """HF's callback for `report_to`, writing under `out_dir` (W&B: its offline files in
    out_dir/wandb unless WANDB_DIR says otherwise, the run named after out_dir unless
    WANDB_NAME is set)."""
    check_report_to(report_to)
    if report_to == "tensorboard":
        return [ResumableTensorBoard(Path(out_dir) / TENSORBOARD_DIR)]
    if report_to == "wandb":
        from transformers.integrations import WandbCallback

        os.environ.setdefault("WANDB_DIR", str(out_dir))
        os.environ.setdefault("WANDB_NAME", Path(out_dir).name)
        return [WandbCallback()]
    return []


def monitor_callbacks(model, teacher, block: int, settings: TrainSettings, exits: int, world_size: int,
                      out_dir: Path) -> list:
    """The run's monitor and, after it, its `report_to` callback. FLOPs per token are
    `rrt plan`'s for this model, block length and settings."""
    flops_per_token = train_flops_per_token(
        model_counts(model), block, checkpointing=settings.gradient_checkpointing,
        chunked=bool(settings.loss_chunk_tokens), teacher=None if teacher is None else model_counts(teacher),
        exits=max(exits, 1))
    peak, device = gpu_peak_flops()
    return [RunMonitor(flops_per_token, world_size, peak, device)] + reporting_callbacks(settings.report_to, out_dir)
