"""Sharded resume: DeepSpeed ZeRO checkpoints written by several ranks. The manifest covers
every rank's shards, rank 0 alone checks a checkpoint and the other ranks take its verdict,
and a 2-rank ZeRO-2 / ZeRO-3 job SIGKILLed as a whole mid-run resumes to exactly the loss
history and weights of an uninterrupted one, falling back past a damaged shard.

The fast tests (default `make test`) use checkpoint files named as DeepSpeed names them and
2 gloo ranks in subprocesses; the slow ones (`make test-slow`, ~2-3 min each on a busy
2-core machine) run the real jobs under torchrun."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rrt.train.checkpoints import MANIFEST, verify, write_manifest
from rrt.train.trainer import train

from . import ranks_run
from .test_checkpoints import _same_as_whole  # the single-rank resume tests' check, unchanged
from .test_train import models, one_thread, read_csv, save_blocks  # noqa: F401  fixtures

RUN = {"lr": 0.01, "world_size": 2, "deepspeed": "/configs/zero.json"}
REPO = Path(__file__).resolve().parents[1]
ZERO = {2: REPO / "workflow/deepspeed/zero2.json", 3: REPO / "workflow/deepspeed/zero3.json"}


def _zero_checkpoint(path: Path, step: int, stage: int, world: int = 2) -> Path:
    """A checkpoint laid out as Trainer + DeepSpeed ZeRO-`stage` write it on `world` ranks
    (the files' contents are random bytes)."""
    tag = f"global_step{step}"
    names = ["model.safetensors", "latest", "scheduler.pt", "trainer_state.json",
             *(["rng_state.pth"] if world == 1 else [f"rng_state_{r}.pth" for r in range(world)]),
             *[f"{tag}/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)]]
    names += [f"{tag}/zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)] if stage == 3 \
        else [f"{tag}/mp_rank_00_model_states.pt"]
    g = torch.Generator().manual_seed(step)
    for name in names:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(bytes(torch.randint(0, 256, (64 + step,), generator=g, dtype=torch.uint8).tolist()))
    return path


@pytest.mark.parametrize("stage, shard", [(2, "optim"), (3, "optim"), (3, "model")])
def test_manifest_covers_every_ranks_zero_shards(tmp_path, stage, shard):
    """Every rank's shard is listed and hashed; a checkpoint without rank 1's is never marked
    complete, and a manifest without it (written by an older version, or edited) is refused."""
    checkpoint = _zero_checkpoint(tmp_path / "checkpoint-4", 4, stage)
    manifest = write_manifest(checkpoint, RUN, 4)
    shards = sorted(n for n in manifest["files"] if "zero_pp_rank" in n)
    assert shards == sorted(f"global_step4/zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt"
                            for r in range(2) for kind in (("optim", "model") if stage == 3 else ("optim",)))
    assert verify(checkpoint) == (manifest, None)

    rank1 = f"global_step4/zero_pp_rank_1_mp_rank_00_{shard}_states.pt"
    data = bytearray((checkpoint / rank1).read_bytes())
    data[5] ^= 0xFF
    (checkpoint / rank1).write_bytes(bytes(data))
    assert verify(checkpoint) == (None, f"{rank1} does not match its sha256 in {MANIFEST}")

    listed = json.loads((checkpoint / MANIFEST).read_text())
    del listed["files"][rank1]
    (checkpoint / MANIFEST).write_text(json.dumps(listed))
    assert verify(checkpoint) == (None, f"rank 1's ZeRO {shard}-state shard is not in {MANIFEST}")

    (checkpoint / MANIFEST).unlink()
    (checkpoint / rank1).unlink()  # e.g. rank 1 wrote to a disk rank 0 does not see
    with pytest.raises(RuntimeError, match=f"lacks rank 1's ZeRO {shard}-state shard: not marking it complete"):
        write_manifest(checkpoint, RUN, 4)
    assert not (checkpoint / MANIFEST).exists()


def test_one_rank_zero_and_plain_deepspeed_need_no_other_ranks_shards(tmp_path):
    """One rank writes shard 0 only; DeepSpeed without ZeRO writes no per-rank shard."""
    one = _zero_checkpoint(tmp_path / "checkpoint-1", 1, stage=2, world=1)
    manifest = write_manifest(one, {**RUN, "world_size": 1}, 1)
    assert verify(one) == (manifest, None)
    plain = _zero_checkpoint(tmp_path / "checkpoint-2", 2, stage=2)
    shutil.rmtree(plain / "global_step2")
    (plain / "global_step2").mkdir()
    (plain / "global_step2" / "mp_rank_00_model_states.pt").write_bytes(b"weights and optimizer")
    manifest = write_manifest(plain, RUN, 2)
    assert verify(plain) == (manifest, None)


def test_rank_0_checks_once_and_the_other_rank_takes_its_verdict(tmp_path):
    """2 gloo ranks call find_resume: rank 0 verifies (checkpoint-3 fails on rank 1's shard,
    checkpoint-2 passes, each file hashed once), removes the damaged one and says so; rank 1
    reads and hashes nothing and returns the same checkpoint. A rerun with other settings is
    refused on both ranks with rank 0's message, and nothing is removed. An I/O error on
    rank 0 fails both ranks (rank 1 does not wait forever)."""
    import torch.multiprocessing as mp

    resumable, refused = tmp_path / "resumable", tmp_path / "refused"
    for step in (2, 3):
        write_manifest(_zero_checkpoint(resumable / f"checkpoint-{step}", step, stage=2), RUN, step)
    shutil.copytree(resumable, refused)
    damaged = resumable / "checkpoint-3" / "global_step3" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    damaged.write_bytes(b"x" * damaged.stat().st_size)
    files2 = sorted(json.loads((resumable / "checkpoint-2" / MANIFEST).read_text())["files"])

    cases = [(str(resumable), RUN, False), (str(refused), {**RUN, "lr": 0.02}, False), (str(refused), RUN, True)]
    mp.spawn(ranks_run.verdict_on_rank, args=(str(tmp_path / "rendezvous"), cases, str(tmp_path)), nprocs=2)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))

    assert rank0[0]["found"] == rank1[0]["found"] == str(resumable / "checkpoint-2")
    assert rank0[0]["printed"] == [f"skipping checkpoint-3: {damaged.relative_to(damaged.parents[1]).as_posix()} "
                                   f"does not match its sha256 in {MANIFEST}", "resuming from checkpoint-2"]
    assert rank0[0]["verified"] == ["checkpoint-3", "checkpoint-2"]
    assert sorted(Path(p).relative_to(resumable / "checkpoint-2").as_posix() for p in rank0[0]["hashed"]
                  if "checkpoint-2" in p) == files2
    assert (rank1[0]["printed"], rank1[0]["verified"], rank1[0]["hashed"]) == ([], [], [])
    assert sorted(p.name for p in resumable.iterdir()) == ["checkpoint-2"]  # removed once, by rank 0

    message = f"{refused} holds a run with lr=0.01, not 0.02: remove it or use another output directory"
    assert rank0[1]["refused"] == rank1[1]["refused"] == message
    assert rank1[1]["verified"] == [] and rank1[1]["hashed"] == []
    assert sorted(p.name for p in refused.iterdir()) == ["checkpoint-2", "checkpoint-3"]

    assert rank0[2]["failed"].startswith("OSError: ") and rank0[2]["failed"].endswith(": Input/output error")
    assert rank1[2]["failed"] == f"RuntimeError: rank 0 could not choose a checkpoint in {refused}: " \
        + rank0[2]["failed"]
    assert rank1[2]["hashed"] == []


def test_zero3_refuses_a_recursive_model_in_one_line(models, tmp_path, monkeypatch):
    """ZeRO-3 cannot partition a recursive model's shared block (it runs through per-depth
    views, not the registered module): refused before any training, not an AttributeError
    (`ds_id`) from DeepSpeed's hooks at the first step."""
    _, rec = models
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "")  # recorded, so that the one-process world train() declares
        monkeypatch.delenv(name)  # for DeepSpeed is undone after the test
    data = save_blocks(tmp_path / "data", 8)
    with pytest.raises(ValueError, match=r"^DeepSpeed ZeRO-3 \(.*zero3\.json\) cannot train a recursive model: .*use "
                                         r"ZeRO-2$"):
        train(rec, data, tmp_path / "out", ranks_run.settings_for(2, ZERO[3]), progress=False)
    assert not (tmp_path / "out" / "checkpoints").exists()


# --- slow: real 2-rank DeepSpeed jobs, SIGKILLed as a whole -----------------------------------
STEPS = 4


def _job(model, data, out, stage, kill_at=None):
    import os

    argv = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2",
            str(Path(ranks_run.__file__)), str(model), str(data), str(out), "--steps", str(STEPS),
            "--deepspeed", str(ZERO[stage])]
    if kill_at is not None:
        argv += ["--kill-whole-job-at", str(kill_at)]
    return subprocess.run(argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3], ids=["zero2", "zero3"])
def test_zero_job_killed_mid_run_resumes_like_an_uninterrupted_one(request, tmp_path, stage):
    """2 ranks under torchrun with DeepSpeed ZeRO-`stage`, 4 steps, a checkpoint every step.
    The uninterrupted job matches the plain 1-rank run (<= 4e-6 relative). Another is
    SIGKILLed as a whole (agent and both ranks) once checkpoint-3 is written but before its
    manifest: its rerun skips checkpoint-3, resumes from checkpoint-2 and ends with the
    uninterrupted job's loss.csv (byte for byte) and final weights (bit for bit). With one
    byte of rank 1's shard in checkpoint-2 flipped, the rerun falls back to checkpoint-1 and
    ends the same. ZeRO-3 trains the plain model: a RecursiveForCausalLM runs its shared
    block through views DeepSpeed's ZeRO-3 hooks do not know (AttributeError: ds_id)."""
    base, rec = request.getfixturevalue("models")
    model = rec if stage == 2 else base
    data = save_blocks(tmp_path / "data", 16)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = _job(model, data, whole, stage)
    assert done.returncode == 0, done.stderr[-3000:]

    train(model, data, tmp_path / "one", ranks_run.settings_for(STEPS), progress=False)
    one, two = read_csv(tmp_path / "one" / "loss.csv"), read_csv(whole / "loss.csv")
    assert [r["tokens_seen"] for r in two] == [r["tokens_seen"] for r in one] and len(one) == STEPS
    for a, b in zip(one, two):
        for key in ("loss", "ce", "lr"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=4e-6, abs=0), (a["step"], key)

    killed = _job(model, data, cut, stage, kill_at=3)
    assert killed.returncode == -9, killed.stderr[-3000:]
    checkpoints = cut / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert not (checkpoints / "checkpoint-3" / MANIFEST).exists() and not (cut / "final").exists()
    manifest, why = verify(checkpoints / "checkpoint-2")
    assert why is None
    kinds = ("optim", "model") if stage == 3 else ("optim",)
    assert {f"global_step2/zero_pp_rank_{r}_mp_rank_00_{k}_states.pt" for r in range(2) for k in kinds} \
        <= set(manifest["files"])

    damaged = tmp_path / "damaged"
    shutil.copytree(cut, damaged)
    shard = damaged / "checkpoints/checkpoint-2/global_step2" / f"zero_pp_rank_1_mp_rank_00_{kinds[-1]}_states.pt"
    data_bytes = bytearray(shard.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0xFF
    shard.write_bytes(bytes(data_bytes))

    resumed = _job(model, data, cut, stage)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = [line for line in resumed.stdout.splitlines() if line.startswith(("skipping", "resuming"))]
    assert lines == [f"skipping checkpoint-3: no {MANIFEST} (cut off while saving)", "resuming from checkpoint-2"]
    _same_as_whole(whole, cut)

    resumed = _job(model, data, damaged, stage)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = [line for line in resumed.stdout.splitlines() if line.startswith(("skipping", "resuming"))]
    assert lines == [f"skipping checkpoint-3: no {MANIFEST} (cut off while saving)",
                     f"skipping checkpoint-2: global_step2/{shard.name} does not match its sha256 in {MANIFEST}",
                     "resuming from checkpoint-1"]
    _same_as_whole(whole, damaged)
