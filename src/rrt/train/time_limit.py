"""Uptraining across time-limited jobs: stop before the limit, continue in the next job.

15B tokens on 8 GPUs take days; a SLURM partition allows hours. A run that cannot finish
in its job checkpoints at a step boundary `margin` seconds (plus one step) before the job's
end and stops with `Paused` (exit code 75 from the CLI); the next run of the job resumes
from that checkpoint and the run ends exactly as an uninterrupted one would.

- The deadline is the earlier of `--time-limit` minutes after training started and the
  SLURM job's own end time (asked of `squeue` when SLURM_JOB_ID is set), so it holds
  however long the job queued or started up.
- SIGUSR1 (SLURM's `--signal=USR1@SECONDS`: time is running out) asks for the same stop
  at the next step boundary. So does SIGTERM (`scancel`, a preemption), but that stop does
  not requeue: a cancelled job stays cancelled (a preempting SLURM requeues by itself), and
  a rerun continues from the checkpoint just written.
- Every rank must stop after the same step: the ranks' wishes are combined with an
  all-reduce (max) at each step end, so one rank's clock or signal stops them all together.
- Continuing: inside a SLURM job (`requeue`), after a time-limit or SIGUSR1 pause rank 0
  requeues the job once every rank has paused: SLURM restarts the same job id (after its
  ~2-minute requeue hold), Snakemake keeps waiting for it, and the restarted job resumes
  from the checkpoint. Only a pause requeues: a job that fails for any other reason fails,
  once, and a rerun resumes from the last checkpoint as always. Outside SLURM the CLI
  exits 75 and a rerun continues. Each run is a line of out/sessions.jsonl.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

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
    ends = [slurm_end_time(), None if time_limit_minutes is None else started + 60 * time_limit_minutes]
    return min((e for e in ends if e is not None), default=None)


SESSIONS = "sessions.jsonl"


def record_session(out_dir: Path, *, from_step: int, to_step: int, status: str) -> None:
    """One line per training session (a job, or a run of a requeued job) in
    out_dir/sessions.jsonl: which SLURM job, host, steps and how it ended. Appended and
    synced, so the history survives the requeue that follows. History only: a failure to
    write it is reported, never fatal."""
    line = json.dumps({"slurm_job": os.environ.get("SLURM_JOB_ID"), "host": platform.node(),
                       "ended": datetime.now().isoformat(timespec="seconds"), "from_step": from_step,
                       "to_step": to_step, "status": status})
    try:
        with open(Path(out_dir) / SESSIONS, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        print(f"could not record the session in {Path(out_dir) / SESSIONS}: {e}", flush=True)


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
    (None if it did not); `continues` whether the job should go on (not after SIGTERM)."""

    def __init__(self, deadline: float | None, margin: float, clock=time.time):
        self.deadline, self.margin, self.clock = deadline, margin, clock
        self.signalled: str | None = None
        self.paused: str | None = None
        self.continues = False
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
        cancel = self.signalled == "SIGTERM"
        wish = 0 if reason is None else (2 if cancel else 1)
        agreed = _max_over_ranks(wish, args.device)  # a cancel anywhere wins over a time limit
        if agreed and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
            self.paused = reason or "another rank's time limit or signal"
            self.continues = agreed == 1


def _max_over_ranks(value: int, device) -> int:
    """The largest of the ranks' values, on every rank (all ranks must call this together)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def pause(trainer, stop: StopBeforeLimit, out_dir: Path, from_step: int, requeue: bool) -> None:
    """After a pause: say so (a requeue kills the job before the CLI could) in the log and
    in sessions.jsonl; with `requeue` and a pause that continues, rank 0 requeues the job
    once every rank has its part of the checkpoint on disk."""
    step = trainer.state.global_step
    if trainer.is_world_process_zero():
        print(f"paused at step {step} ({stop.paused}); checkpoint-{step} is saved", flush=True)
        record_session(out_dir, from_step=from_step, to_step=step, status=f"paused: {stop.paused}")
    if not (requeue and stop.continues):
        return
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        why_not = requeue_slurm_job()
        print("requeued this SLURM job: it continues from the checkpoint" if why_not is None
              else f"could not requeue ({why_not}): rerun to continue", flush=True)
    trainer.accelerator.wait_for_everyone()
