"""Uptraining across time-limited jobs: stop before the limit, continue in the next job.

15B tokens on 8 GPUs take days; a SLURM partition allows hours. A run that cannot finish
in its job checkpoints at a step boundary `margin` seconds (plus one step) before the job's
end and stops with `Paused` (exit code 75 from the CLI); the next run of the job resumes
from that checkpoint and the run ends exactly as an uninterrupted one would.

- The deadline is the earlier of `--time-limit` minutes after training started and the
  SLURM job's own end time (asked of `squeue` when SLURM_JOB_ID is set), so it holds
  however long the job queued or started up.
- SIGTERM and SIGUSR1 (a preemption, `scancel`, or SLURM's `--signal=USR1@SECONDS`) ask
  for the same stop at the next step boundary.
- Every rank must stop after the same step: the ranks' wishes are combined with an
  all-reduce (max) at each step end, so one rank's clock or signal stops them all together.
- Continuing: inside a SLURM job (`requeue`), rank 0 requeues the job once every rank has
  paused: SLURM restarts the same job id (after its ~2-minute requeue hold), Snakemake keeps
  waiting for it, and the restarted job resumes from the checkpoint. Only a pause requeues:
  a job that fails for any other reason fails, once, and a rerun resumes from the last
  checkpoint as always. Outside SLURM the CLI exits 75 and a rerun continues.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import datetime

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from ..errors import Paused as _Paused

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Paused(_Paused):
    """Training stopped early on purpose, with a checkpoint to continue from."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"paused at step {step} ({reason}); the checkpoint is saved, "
                         "the next job (or a rerun) continues from it")
        self.step, self.reason = step, reason


def slurm_end_time(job_id: str | None = None) -> float | None:
    """The end of the SLURM job (epoch seconds), or None outside SLURM or if unknown."""
    job_id = job_id or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    try:
        r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:  # squeue prints local time, e.g. 2026-11-23T15:01:02; "N/A"/"Unknown" without a limit
        return datetime.strptime(r.stdout.strip(), "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def deadline(time_limit_minutes: float | None, started: float) -> float | None:
    """When this job must be done: the earlier of the given limit and SLURM's end time."""
    ends = [e for e in (slurm_end_time(),) if e is not None]
    if time_limit_minutes is not None:
        ends.append(started + 60 * time_limit_minutes)
    return min(ends) if ends else None


def requeue_slurm_job(job_id: str | None = None) -> str | None:
    """Put this SLURM job back in the queue (same id; SLURM kills it now and starts it again
    after ~2 minutes, and Snakemake keeps waiting for it). None if done, else why not."""
    job_id = job_id or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return "not in a SLURM job"
    r = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip() or f"scontrol requeue exited {r.returncode}")


class StopBeforeLimit(TrainerCallback):
    """Save and stop at the first step end after which one more step would not leave
    `margin` seconds before `deadline`, or after a stop signal. `paused` says why it stopped
    (None if it did not)."""

    def __init__(self, deadline: float | None, margin: float, clock=time.time):
        self.deadline, self.margin, self.clock = deadline, margin, clock
        self.signalled: str | None = None
        self.paused: str | None = None
        self._previous = {}
        self._last = None
        self._longest_step = 0.0

    def _on_signal(self, signum, frame):
        self.signalled = signal.Signals(signum).name

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        self._last = self.clock()

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        self._longest_step = max(self._longest_step, now - self._last)
        self._last = now
        reason = self.signalled and f"signal {self.signalled}"
        if reason is None and self.deadline is not None and now + self._longest_step + self.margin > self.deadline:
            reason = f"{self.margin:.0f} s before the job's time limit"
        if _any_rank(reason is not None, args.device) and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
            self.paused = reason or "another rank's time limit or signal"


def _any_rank(flag: bool, device) -> bool:
    """True on every rank if it is True on any (all ranks must call this together)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
