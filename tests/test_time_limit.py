"""Uptraining across time-limited jobs: a run paused before its time limit (or by a signal)
checkpoints at a step boundary and exits 75; the next run continues it to exactly the loss
history and weights of an uninterrupted run. (The SLURM requeue that continues it by
itself is in tests/test_slurm.py.)"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from rrt.errors import Paused
from rrt.train.checkpoints import MANIFEST
from rrt.train.time_limit import StopBeforeLimit, requeue_slurm_job

from .test_train import BLOCK, FAST, models, one_thread, save_blocks, weights  # noqa: F401  fixtures
from .train_run import train

STEPS = 6
RRT = str(Path(sys.executable).with_name("rrt"))


class SignalAt(TrainerCallback):
    """Sends this process `sig` at the end of `step`, as SLURM or `scancel` would."""

    def __init__(self, step, sig):
        self.step, self.sig = step, sig

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.sig)


@pytest.fixture(scope="module")
def settings(request, tmp_path_factory):
    _, rec = request.getfixturevalue("models")
    data = save_blocks(tmp_path_factory.mktemp("data") / "blocks", 12, period=5)
    return dict(model_dir=rec, data_dir=data, max_tokens=STEPS * 4 * BLOCK, batch_tokens=4 * BLOCK,
                save_steps=100, warmup_steps=1, seed=3, **FAST)


@pytest.fixture(scope="module")
def whole(settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    train(out_dir=out, **settings)
    return out


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_a_signal_pauses_at_the_step_boundary_and_the_next_run_finishes_the_same_run(settings, whole, tmp_path,
                                                                                         sig):
    out = tmp_path / "out"
    before = signal.getsignal(sig)
    with pytest.raises(Paused) as paused:
        train(out_dir=out, callbacks=[SignalAt(2, sig)], **settings)
    assert paused.value.step == 2 and signal.Signals(sig).name in paused.value.reason
    assert signal.getsignal(sig) == before  # the process's own handler is back
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2"] and (out / "checkpoints/checkpoint-2" / MANIFEST).is_file()
    assert not (out / "final").exists()
    summary = train(out_dir=out, **settings)
    assert summary["resumed_from_step"] == 2 and summary["steps"] == STEPS
    sessions = [json.loads(line) for line in open(out / "sessions.jsonl")]
    assert [(s["from_step"], s["to_step"], s["status"]) for s in sessions] == [
        (0, 2, f"paused: signal {signal.Signals(sig).name}"), (2, STEPS, "done")]
    assert (out / "loss.csv").read_text() == (whole / "loss.csv").read_text()
    a, b = weights(whole / "final"), weights(out / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "checkpoints").exists()


def test_requeue_outside_slurm_says_why_not(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert requeue_slurm_job() == "not in a SLURM job"


def _step_end(stop, now, step, max_steps=10):
    stop.clock = lambda: now
    state, control = TrainerState(), TrainerControl()
    state.global_step, state.max_steps = step, max_steps
    stop.on_step_end(TrainingArguments(output_dir="unused", use_cpu=True, report_to=[]), state, control)
    return control


def test_the_deadline_leaves_one_step_and_the_margin():
    """Steps of 20 s, deadline at 100 s, margin 10 s: after the step ending at 60 s one more
    (to 80 s) plus the margin fits; after the one ending at 75 s it would not (105 s)."""
    stop = StopBeforeLimit(deadline=100, margin=10)
    stop._last = 0.0
    for now, step in ((20, 1), (40, 2), (60, 3)):
        control = _step_end(stop, now, step)
        assert not control.should_training_stop and not control.should_save and stop.paused is None
    control = _step_end(stop, 75, 4)
    assert control.should_training_stop and control.should_save
    assert stop.paused == "10 s before the job's time limit"


@pytest.mark.parametrize("signalled, continues", [(None, True), ("SIGUSR1", True), ("SIGTERM", False)])
def test_only_a_cancel_stops_for_good(signalled, continues):
    """A time limit or SLURM's SIGUSR1 warning pauses to continue (the job requeues itself);
    SIGTERM (`scancel`, a preemption) saves and stops: a cancelled job stays cancelled."""
    stop = StopBeforeLimit(deadline=None if signalled else 100, margin=10)
    stop._last, stop.signalled = 0.0, signalled
    control = _step_end(stop, 95, 3)
    assert control.should_training_stop and stop.continues is continues


def test_the_last_step_is_never_a_pause():
    stop = StopBeforeLimit(deadline=100, margin=10)
    stop._last = 0.0
    control = _step_end(stop, 99, 10, max_steps=10)
    assert not control.should_training_stop and stop.paused is None


def test_cli_exits_75_when_the_time_limit_is_already_near(settings, tmp_path):
    """`rrt train --time-limit`: with a limit shorter than the margin the run pauses after
    its first step, says so on one line and exits 75 (EX_TEMPFAIL); a rerun finishes."""
    out = tmp_path / "out"
    argv = [RRT, "train", "--model", str(settings["model_dir"]), "--data", str(settings["data_dir"]),
            "--out", str(out), "--max-tokens", str(STEPS * 4 * BLOCK), "--batch-tokens", str(4 * BLOCK),
            "--micro-batch-size", "2", "--lr", "1e-2", "--warmup-steps", "1", "--save-steps", "100", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    first = subprocess.run(argv + ["--time-limit", "1", "--stop-margin", "60"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 75, first.stderr[-2000:]
    assert "rrt train: paused at step 1" in first.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1"]
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (out / "final").is_dir()
