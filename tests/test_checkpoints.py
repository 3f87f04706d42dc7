"""Checkpoint integrity: a damaged or cut-off checkpoint is skipped with one line saying why,
the run falls back to the previous complete one (or refuses other settings), and ends with
exactly the loss history and weights of an undisturbed run."""
import json
import shutil

import pytest
import torch

import rrt.train.checkpoints as ckpt
from rrt.io import file_sha256
from rrt.train.checkpoints import MANIFEST, find_resume, verify

from .test_train import (  # noqa: F401  models, one_thread: fixtures
    BLOCK,
    FAST,
    CrashAfterSave,
    Interrupted,
    models,
    one_thread,
    save_blocks,
    weights,
)
from .train_run import train

STEPS = 6


@pytest.fixture(scope="module")
def run(request, tmp_path_factory):
    """The settings, the undisturbed run (checkpoints kept) and a run killed right after
    checkpoint-4 was written (checkpoints 2 and 4 on disk)."""
    _, rec = request.getfixturevalue("models")
    root = tmp_path_factory.mktemp("ckpt")
    data = save_blocks(root / "data", 10, period=5)  # epoch 1 ends inside step 3
    settings = dict(model_dir=rec, data_dir=data, max_tokens=STEPS * 4 * BLOCK, batch_tokens=4 * BLOCK,
                    save_steps=2, warmup_steps=1, seed=3, **FAST)
    whole = root / "whole"
    train(out_dir=whole, keep_checkpoints=True, **settings)
    cut = root / "cut"
    with pytest.raises(Interrupted):
        train(out_dir=cut, callbacks=[CrashAfterSave(4)], **settings)
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    return settings, whole, cut


def _copy_cut(cut, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(cut, out)
    return out


def _same_as_whole(whole, out):
    """Exactly the undisturbed run: loss.csv byte for byte, every weight bit for bit."""
    assert (out / "loss.csv").read_text() == (whole / "loss.csv").read_text()
    a, b = weights(whole / "final"), weights(out / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not (out / "checkpoints").exists()


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "delete optimizer.pt": ("optimizer.pt", lambda p: p.unlink(), "optimizer.pt is missing"),
    "empty trainer_state.json": ("trainer_state.json", lambda p: p.write_text(""),
                                 "trainer_state.json has 0 bytes"),
    "truncate optimizer.pt": ("optimizer.pt", _truncate, "optimizer.pt has "),
    "truncate model.safetensors": ("model.safetensors", _truncate, "model.safetensors has "),
    "truncate rng_state.pth": ("rng_state.pth", _truncate, "rng_state.pth has "),
    "truncate scheduler.pt": ("scheduler.pt", _truncate, "scheduler.pt has "),
    "flip a byte of model.safetensors": ("model.safetensors", _flip_byte,
                                         "model.safetensors does not match its sha256"),
    "no manifest (cut off before it)": (MANIFEST, lambda p: p.unlink(), f"no {MANIFEST}"),
    "unreadable manifest": (MANIFEST, lambda p: p.write_text('{"format": 1, "fi'), f"{MANIFEST} is unreadable"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(run, tmp_path, capsys, damage):
    settings, whole, cut = run
    out = _copy_cut(cut, tmp_path)
    name, hurt, why = DAMAGE[damage]
    hurt(out / "checkpoints" / "checkpoint-4" / name)
    capsys.readouterr()
    summary = train(out_dir=out, **settings)
    printed = capsys.readouterr().out
    skips = [line for line in printed.splitlines() if line.startswith("skipping")]
    assert len(skips) == 1 and skips[0].startswith(f"skipping checkpoint-4: {why}"), printed
    assert "resuming from checkpoint-2" in printed
    assert summary["resumed_from_step"] == 2 and summary["steps"] == STEPS
    _same_as_whole(whole, out)


def test_both_checkpoints_damaged_starts_from_scratch(run, tmp_path, capsys):
    settings, whole, cut = run
    out = _copy_cut(cut, tmp_path)
    (out / "checkpoints" / "checkpoint-4" / "optimizer.pt").unlink()
    (out / "checkpoints" / "checkpoint-2" / "scheduler.pt").unlink()
    capsys.readouterr()
    summary = train(out_dir=out, **settings)
    printed = capsys.readouterr().out
    assert "skipping checkpoint-4: optimizer.pt is missing" in printed
    assert "skipping checkpoint-2: scheduler.pt is missing" in printed
    assert "starting from scratch" in printed
    assert summary["resumed_from_step"] is None
    _same_as_whole(whole, out)


def test_manifest_settings_are_the_truth_without_train_config(run, tmp_path):
    """train_config.json deleted and a rerun with another lr: refused (the manifest keeps the
    settings), nothing removed; the right settings then resume."""
    settings, whole, cut = run
    out = _copy_cut(cut, tmp_path)
    (out / "train_config.json").unlink()
    with pytest.raises(ValueError, match=r"holds a run with lr=0\.01, not 0\.02: remove it"):
        train(out_dir=out, **{**settings, "lr": 2e-2})
    for step in (2, 4):
        assert verify(out / "checkpoints" / f"checkpoint-{step}")[1] is None
    assert not (out / "train_config.json").exists()
    summary = train(out_dir=out, **settings)
    assert summary["resumed_from_step"] == 4
    _same_as_whole(whole, out)


def test_refusal_looks_past_damaged_checkpoints(run, tmp_path):
    """The newest *complete* checkpoint's settings decide, and a refusal removes nothing."""
    settings, _, cut = run
    out = _copy_cut(cut, tmp_path)
    (out / "checkpoints" / "checkpoint-4" / "optimizer.pt").unlink()
    with pytest.raises(ValueError, match="max_tokens=384, not 448"):
        train(out_dir=out, **{**settings, "max_tokens": 7 * 4 * BLOCK})
    assert (out / "checkpoints" / "checkpoint-4").is_dir()


def test_manifest_lists_every_file_and_is_written_last(run):
    settings, whole, _ = run
    checkpoints = whole / "checkpoints"
    # 3 saves (2, 4, 6), the 2 newest complete ones kept
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    run_config = json.loads((whole / "train_config.json").read_text())
    for step in (4, 6):
        path = checkpoints / f"checkpoint-{step}"
        manifest = json.loads((path / MANIFEST).read_text())
        assert manifest["step"] == step and manifest["run"] == run_config
        files = sorted(p.name for p in path.iterdir() if p.name != MANIFEST)
        assert sorted(manifest["files"]) == files
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                "trainer_state.json"} <= set(files)
        for name, entry in manifest["files"].items():
            assert file_sha256(path / name) == (entry["size"], entry["sha256"])
            assert (path / name).stat().st_mtime_ns <= (path / MANIFEST).stat().st_mtime_ns
        assert verify(path) == (manifest, None)


def test_kill_before_the_manifest_keeps_the_previous_checkpoints(run, tmp_path, capsys, monkeypatch):
    """Killed after Trainer wrote checkpoint-6 but before its manifest: rotation has not run,
    both earlier checkpoints are intact, and the rerun skips checkpoint-6."""
    settings, whole, cut = run
    out = _copy_cut(cut, tmp_path)
    real = ckpt.write_manifest

    def killed_at_6(checkpoint, run_settings, step):
        if step == 6:
            raise Interrupted
        return real(checkpoint, run_settings, step)

    monkeypatch.setattr(ckpt, "write_manifest", killed_at_6)
    with pytest.raises(Interrupted):  # resumes from 4; with keep_checkpoints step 6 is saved
        train(out_dir=out, keep_checkpoints=True, **settings)
    monkeypatch.undo()
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert not (checkpoints / "checkpoint-6" / MANIFEST).exists()
    for step in (2, 4):
        assert verify(checkpoints / f"checkpoint-{step}")[1] is None
    capsys.readouterr()
    summary = train(out_dir=out, **settings)
    assert f"skipping checkpoint-6: no {MANIFEST}" in capsys.readouterr().out
    assert summary["resumed_from_step"] == 4
    _same_as_whole(whole, out)


def test_rerun_of_a_complete_run_removes_stale_checkpoints(run, tmp_path, capsys):
    """A kill between renaming the final model and removing the checkpoints: the rerun has
    nothing to train but removes them (and any leftover temp model), unless asked to keep them."""
    settings, whole, _ = run
    out = tmp_path / "out"
    shutil.copytree(whole, out)  # final + checkpoints, as such a kill leaves them
    (out / ".final.tmp").mkdir()
    stored = json.loads((out / "train_summary.json").read_text())
    assert train(out_dir=out, keep_checkpoints=True, **settings) == stored
    assert (out / "checkpoints").is_dir()
    capsys.readouterr()
    assert train(out_dir=out, **settings) == stored
    printed = capsys.readouterr().out
    assert "nothing to do" in printed and "removed the checkpoints" in printed
    assert not (out / "checkpoints").exists() and not (out / ".final.tmp").exists()


def test_find_resume_alone(run, tmp_path, capsys):
    """Without settings it only checks integrity; nothing at all is not 'from scratch' news."""
    _, _, cut = run
    assert find_resume(tmp_path / "none") is None
    assert capsys.readouterr().out == ""
    out = _copy_cut(cut, tmp_path)
    assert find_resume(out / "checkpoints", clean=False).name == "checkpoint-4"
    (out / "checkpoints" / "checkpoint-4" / "rng_state.pth").unlink()
    assert find_resume(out / "checkpoints", clean=False).name == "checkpoint-2"
    assert (out / "checkpoints" / "checkpoint-4").is_dir()  # clean=False: kept
    assert find_resume(out / "checkpoints").name == "checkpoint-2"
    assert not (out / "checkpoints" / "checkpoint-4").exists()


# --- chaos: SIGKILLs at random, during checkpoint writes too --------------------------------
_CHILD = """
import sys, torch
torch.set_num_threads(1)
from rrt.settings import TrainSettings
from rrt.train.trainer import train
model, data, out, steps = sys.argv[1:5]
train(model, data, out, TrainSettings(tokens=int(steps) * 4 * {block}, batch_tokens=4 * {block}, save_steps=1,
      warmup_steps=1, seed=3, micro_batch_size=2, lr=1e-2), progress=False)
"""


@pytest.mark.slow
def test_random_kills_end_like_an_uninterrupted_run(request, tmp_path):
    """`train` in a child process, SIGKILLed again and again (at random moments and the moment
    a checkpoint directory appears without its manifest, i.e. while Trainer writes it), then
    left to finish: loss.csv and the final weights are those of an uninterrupted run."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    _, rec = request.getfixturevalue("models")
    data = save_blocks(tmp_path / "data", 10, period=5)
    steps = 60
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = _CHILD.format(block=BLOCK)

    def start(out):
        return subprocess.Popen([sys.executable, "-c", code, str(rec), str(data), str(out), str(steps)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    whole = tmp_path / "whole"
    child = start(whole)
    assert child.wait(timeout=600) == 0, child.stderr.read()[-3000:]

    out, rng, kills = tmp_path / "chaos", random.Random(0), 0
    checkpoints = out / "checkpoints"

    def present():  # steps with a checkpoint directory
        return {int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*")}

    def complete():  # steps whose checkpoint has its manifest
        return {int(p.parent.name.split("-")[1]) for p in checkpoints.glob(f"checkpoint-*/{MANIFEST}")}

    # Kills follow the run's progress, not the clock (so every attempt is killed whatever the
    # machine's speed): even attempts the moment a new checkpoint directory exists without its
    # manifest (Trainer is writing it), odd ones a random few milliseconds after 1-3 more
    # checkpoints are complete. Each attempt advances at most 3 of the 60 steps.
    for attempt in range(12):
        done = max(complete(), default=0)
        child = start(out)
        target, delay = done + rng.randint(1, 3), rng.uniform(0, 0.05)
        while child.poll() is None:
            if attempt % 2 == 0:
                writing = {s for s in present() if s > done} - complete()
                if writing:
                    break
            elif max(complete(), default=0) >= target:
                time.sleep(delay)
                break
            time.sleep(0.001)
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        child.wait(timeout=60)
        if (out / "final").exists():
            break
    if not (out / "final").exists():
        child = start(out)
        assert child.wait(timeout=600) == 0, child.stderr.read()[-3000:]
    assert kills == 12, kills
    _same_as_whole(whole, out)


def test_resume_of_a_tied_model_loads_without_missing_keys(run, tmp_path):
    """The tied LM head is not in a checkpoint (it is the embeddings): resuming re-ties it
    instead of warning that `base.lm_head.weight` is missing, and ends like the whole run."""
    import logging

    from transformers.utils import logging as hf_logging

    settings, whole, cut = run
    out = _copy_cut(cut, tmp_path)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    hf_logging.add_handler(handler)
    try:
        summary = train(out_dir=out, **settings)
    finally:
        hf_logging.remove_handler(handler)
    assert summary["resumed_from_step"] == 4
    assert not [m for m in messages if "missing keys" in m], messages
    _same_as_whole(whole, out)


def test_two_ranks_write_one_manifest_and_resume_past_a_damaged_checkpoint(request, tmp_path):
    """torchrun with 2 CPU ranks (DDP over gloo): rank 0 writes each manifest after both
    ranks have written their files (both RNG states are listed); a rerun skips a damaged
    newest checkpoint once, resumes from the previous one and ends with the loss history
    of the undisturbed run."""
    import csv
    import os
    import subprocess
    import sys
    from pathlib import Path

    _, rec = request.getfixturevalue("models")
    data = save_blocks(tmp_path / "data", 16)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    argv = [torchrun, "--nproc_per_node", "2", "-m", "rrt.cli", "train", "--model", str(rec), "--data", str(data),
            "--out", str(tmp_path / "out"), "--max-tokens", str(16 * BLOCK), "--batch-tokens", str(4 * BLOCK),
            "--micro-batch-size", "1", "--lr", "1e-2", "--save-steps", "1", "--keep-checkpoints"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch():
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    launch()
    out = tmp_path / "out"
    newest = out / "checkpoints" / "checkpoint-4"
    manifest = json.loads((newest / MANIFEST).read_text())
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "scheduler.pt"} <= set(manifest["files"])
    whole = list(csv.DictReader(open(out / "loss.csv")))
    shutil.rmtree(out / "final")
    (newest / "optimizer.pt").unlink()
    printed = launch()
    skips = [line for line in printed.splitlines() if line.startswith("skipping")]
    assert skips == ["skipping checkpoint-4: optimizer.pt is missing"], printed
    assert "resuming from checkpoint-3" in printed
    again = list(csv.DictReader(open(out / "loss.csv")))
    assert [r["loss"] for r in again] == [r["loss"] for r in whole]
