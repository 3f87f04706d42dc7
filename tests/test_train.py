"""Uptraining: batch arithmetic, learning, KD, resume equivalence, reruns and the CLI."""
import csv
import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from rrt.cli import main
from rrt.model.convert import convert
from rrt.model.modeling import RecursiveForCausalLM
from rrt.train.trainer import last_checkpoint, num_steps, plan_batches, train

from .conftest import VOCAB, cli_error, make_tiny

BLOCK = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny llama (the teacher) and its relaxed recursive conversion (the student)."""
    root = tmp_path_factory.mktemp("models")
    base = make_tiny("llama", layers=4)
    base.save_pretrained(root / "base")
    convert(base, loops=2, init="average", rank=4).save_pretrained(root / "rec")
    return root / "base", root / "rec"


def save_blocks(path, blocks: int, seed: int = 0, period: int = 8):
    """Packed blocks of a learnable pattern: a cycle of `period` token ids starting at a
    random phase, so the next token is predictable from the previous one."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(blocks):
        phase = int(torch.randint(0, period, (1,), generator=g))
        rows.append([10 + (phase + j) % period for j in range(BLOCK)])
    datasets.Dataset.from_dict({"input_ids": rows}).save_to_disk(str(path))
    return path


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def weights(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return {k: v.clone() for k, v in model.state_dict().items()}


FAST = dict(micro_batch_size=2, lr=1e-2, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: a second thread only adds synchronisation, and on a busy 2-core machine
    spinning threads make each step ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- batch arithmetic ---------------------------------------------------------------------
def test_plan_batches_reaches_the_token_batch():
    assert plan_batches(2048, 256, 4) == (4, 2, 2048)  # the embedded default: 8 blocks per step
    assert plan_batches(2048, 256, 16) == (8, 1, 2048)  # micro-batch shrinks to the step
    assert plan_batches(256, 256, 4) == (1, 1, 256)
    assert plan_batches(2**21, 2048, 8, world_size=8) == (8, 16, 2**21)  # paper: 8 GPUs, ~2M tokens
    assert plan_batches(10 * 256, 256, 4) == (4, 2, 2048)  # 2.5 micro-batches round to 2
    assert num_steps(16384, 2048) == 8
    assert num_steps(5000, 2048) == 2  # closest to the budget
    assert num_steps(100, 2048) == 1
    with pytest.raises(ValueError, match="smaller than one block"):
        plan_batches(255, 256, 4)


def test_accumulation_in_a_run(models, tmp_path):
    _, rec = models
    data = save_blocks(tmp_path / "data", 24)
    # 3 blocks per step at micro-batch 1 -> 3 accumulation steps; 6 blocks -> 2 steps
    summary = train(rec, data, tmp_path / "out", max_tokens=6 * BLOCK, batch_tokens=3 * BLOCK,
                    micro_batch_size=1, lr=1e-3, progress=False)
    assert (summary["gradient_accumulation"], summary["micro_batch_size"], summary["steps"]) == (3, 1, 2)
    assert summary["tokens"] == 6 * BLOCK and summary["tokens_per_step"] == 3 * BLOCK
    rows = read_csv(tmp_path / "out" / "loss.csv")
    assert [int(r["tokens_seen"]) for r in rows] == [3 * BLOCK, 6 * BLOCK]
    assert float(rows[0]["loss"]) == pytest.approx(float(rows[0]["ce"]))  # no teacher: loss is CE


# --- learning -----------------------------------------------------------------------------
def test_loss_goes_down_on_a_recursive_model(models, tmp_path):
    _, rec = models
    data = save_blocks(tmp_path / "data", 64)
    out = tmp_path / "out"
    summary = train(rec, data, out, max_tokens=16 * 4 * BLOCK, batch_tokens=4 * BLOCK, save_steps=8, **FAST)
    rows = read_csv(out / "loss.csv")
    assert list(rows[0]) == ["step", "tokens_seen", "loss", "ce", "lr"]
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 16 and summary["steps"] == 16
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
    # cosine schedule: the first step runs at the peak (no warmup), then it decays
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-2) and lrs == sorted(lrs, reverse=True)
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert isinstance(model, RecursiveForCausalLM)
    assert not (out / "checkpoints").exists() and not (out / ".final.tmp").exists()
    stored = json.loads((out / "train_summary.json").read_text())
    assert stored["final_loss"] == pytest.approx(losses[-1]) and stored["tokens_per_second"] > 0
    assert stored["config"]["lr"] == 1e-2 and stored["config"]["teacher_dir"] is None


def test_kd_run_logs_kd_and_mixes_the_losses(models, tmp_path):
    base, rec = models
    data = save_blocks(tmp_path / "data", 16)
    out = tmp_path / "out"
    summary = train(rec, data, out, max_tokens=3 * 4 * BLOCK, batch_tokens=4 * BLOCK, teacher_dir=base,
                    kd_kind="jsd", kd_weight=0.25, kd_temperature=2.0, **FAST)
    rows = read_csv(out / "loss.csv")
    assert list(rows[0]) == ["step", "tokens_seen", "loss", "ce", "kd", "lr"]
    for r in rows:
        ce, kd, loss = float(r["ce"]), float(r["kd"]), float(r["loss"])
        assert kd > 0
        assert loss == pytest.approx(0.75 * ce + 0.25 * kd, rel=1e-5)
    assert summary["final_kd"] == pytest.approx(float(rows[-1]["kd"]))
    assert summary["config"]["kd_kind"] == "jsd"


def test_student_equal_to_teacher_has_zero_kd(models, tmp_path):
    base, _ = models
    data = save_blocks(tmp_path / "data", 8)
    train(base, data, tmp_path / "out", max_tokens=4 * BLOCK, batch_tokens=4 * BLOCK, teacher_dir=base,
          kd_weight=1.0, **FAST)
    row = read_csv(tmp_path / "out" / "loss.csv")[0]  # first step: before any update
    assert float(row["kd"]) == pytest.approx(0.0, abs=1e-6) and float(row["loss"]) == pytest.approx(0.0, abs=1e-6)


# --- resume -------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


class CrashAfterSave(TrainerCallback):
    """Dies right after the checkpoint of `step` is written, like a job killed there."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted


def test_resume_continues_the_same_run(models, tmp_path):
    base, rec = models
    # 10 blocks, 2 per micro-batch, 2 micro-batches per step: epoch 1 ends inside step 3,
    # so the resumed run must skip into the epoch and then reshuffle for the next one.
    data = save_blocks(tmp_path / "data", 10, period=5)
    settings = dict(max_tokens=4 * 4 * BLOCK, batch_tokens=4 * BLOCK, save_steps=2, warmup_steps=1, seed=3,
                    teacher_dir=base, kd_weight=0.5, **FAST)
    whole = tmp_path / "whole"
    train(rec, data, whole, keep_checkpoints=True, **settings)

    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        train(rec, data, cut, callbacks=[CrashAfterSave(2)], **settings)
    assert not (cut / "final").exists()
    assert last_checkpoint(cut / "checkpoints").name == "checkpoint-2"
    (cut / "checkpoints" / "checkpoint-3").mkdir()  # a save cut off midway: must be skipped
    summary = train(rec, data, cut, **settings)
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4

    a, b = weights(whole / "final"), weights(cut / "final")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    rows_a, rows_b = read_csv(whole / "loss.csv"), read_csv(cut / "loss.csv")
    assert [r["step"] for r in rows_b] == ["1", "2", "3", "4"]
    assert summary["session_tokens"] == summary["tokens"] - int(rows_b[1]["tokens_seen"])
    for ra, rb in zip(rows_a, rows_b):
        assert ra["tokens_seen"] == rb["tokens_seen"]
        for key in ("loss", "ce", "kd", "lr"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-6, abs=1e-7), (ra["step"], key)
    # and training did change the model
    start = weights(rec)
    assert any(not torch.allclose(start[k], a[k]) for k in a)


def test_resume_refuses_other_settings(models, tmp_path):
    _, rec = models
    data = save_blocks(tmp_path / "data", 8)
    settings = dict(batch_tokens=2 * BLOCK, save_steps=1, **FAST)
    with pytest.raises(Interrupted):
        train(rec, data, tmp_path / "out", max_tokens=4 * BLOCK, callbacks=[CrashAfterSave(1)], **settings)
    with pytest.raises(ValueError, match="max_tokens=64, not 128"):
        train(rec, data, tmp_path / "out", max_tokens=8 * BLOCK, **settings)


def test_rerun_with_final_is_a_no_op(models, tmp_path, capsys):
    _, rec = models
    data = save_blocks(tmp_path / "data", 8)
    out = tmp_path / "out"
    first = train(rec, data, out, max_tokens=2 * BLOCK, batch_tokens=2 * BLOCK, **FAST)
    stamp = (out / "final" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    again = train(rec, data, out, max_tokens=2 * BLOCK, batch_tokens=2 * BLOCK, **FAST)
    assert "nothing to do" in capsys.readouterr().out
    assert again == first
    assert (out / "final" / "model.safetensors").stat().st_mtime_ns == stamp


# --- CLI ----------------------------------------------------------------------------------
def test_cli_trains_and_copies_the_tokenizer(tmp_path, capsys):
    from tokenizers import Tokenizer
    from tokenizers import models as tok_models
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    model_dir = tmp_path / "base"
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(model_dir)
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel(vocab, unk_token="t0")))
    tok.save_pretrained(model_dir)
    data = save_blocks(tmp_path / "data", 4)
    out = tmp_path / "out"
    rc = main(["train", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--max-tokens", "32",
               "--batch-tokens", "32", "--micro-batch-size", "2", "--save-steps", "1"])
    assert rc == 0, capsys.readouterr().err
    assert AutoTokenizer.from_pretrained(out / "final").convert_ids_to_tokens([5]) == ["t5"]
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 1


@pytest.mark.parametrize("extra, culprit", [
    (["--model", "{tmp}/missing"], "--model directory"),
    (["--data", "{tmp}/missing"], "--data directory"),
    (["--batch-tokens", "8"], "smaller than one block"),
    (["--kd-loss", "rkl"], "--kd-loss needs --teacher"),
    (["--kd-weight", "0.3"], "--kd-weight needs --teacher"),
    (["--teacher", "{base}", "--kd-loss", "kl"], "--kd-loss must be one of fkl, rkl, jsd, tvd"),
    (["--teacher", "{base}", "--kd-weight", "1.5"], "kd_weight must be in [0, 1]"),
    (["--teacher", "{tmp}/missing"], "--teacher directory"),
    (["--deepspeed", "{tmp}/ds.json"], "--deepspeed file"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1"),
])
def test_cli_errors_are_one_line(models, tmp_path, capsys, extra, culprit):
    base, rec = models
    data = save_blocks(tmp_path / "data", 4)
    args = {"--model": str(rec), "--data": str(data), "--out": str(tmp_path / "out"), "--max-tokens": "32",
            "--batch-tokens": "32"}
    flags = []
    for flag in extra:
        flags.append(flag.format(tmp=tmp_path, base=base))
    for i in range(0, len(flags), 2):  # override or add
        args[flags[i]] = flags[i + 1]
    argv = ["train"] + [x for kv in args.items() for x in kv]
    err = cli_error(capsys, argv)
    assert culprit in err, err
    assert not (tmp_path / "out" / "final").exists()


ZERO2 = Path(__file__).resolve().parents[1] / "workflow/deepspeed/zero2.json"


def test_shipped_deepspeed_config_is_all_auto():
    """Batch, accumulation, clipping and precision come from the Trainer's arguments, so the
    DeepSpeed config cannot contradict `rrt train`'s own settings."""
    config = json.loads(ZERO2.read_text())
    assert config["zero_optimization"]["stage"] == 2
    assert all(config[k] == "auto" for k in ("train_batch_size", "train_micro_batch_size_per_gpu",
                                             "gradient_accumulation_steps", "gradient_clipping"))


# --- slow: DeepSpeed and the real model ----------------------------------------------------
@pytest.mark.slow
def test_deepspeed_zero2_on_cpu_matches_plain_training(models, tmp_path):
    """DeepSpeed passes through on CPU (a fresh process: it initialises torch.distributed;
    the first use compiles an op, 1-4 min)."""
    import os
    import subprocess
    import sys

    _, rec = models
    data = save_blocks(tmp_path / "data", 8)
    config = ZERO2
    argv = ["train", "--model", str(rec), "--data", str(data), "--max-tokens", str(4 * 2 * BLOCK),
            "--batch-tokens", str(2 * BLOCK), "--micro-batch-size", "1", "--lr", "1e-2", "--save-steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "rrt.cli", *argv, "--out", str(tmp_path / "ds"),
                           "--deepspeed", str(config)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(argv + ["--out", str(tmp_path / "plain")]) == 0
    ds, plain = read_csv(tmp_path / "ds" / "loss.csv"), read_csv(tmp_path / "plain" / "loss.csv")
    assert len(ds) == len(plain) == 4
    for a, b in zip(ds, plain):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4)


@pytest.mark.slow
@pytest.mark.real_model
def test_real_model_distilled_from_itself(smollm2_dir, tmp_path):
    """SmolLM2-135M, one step with itself as teacher: KD starts at 0, the tokenizer is kept."""
    from transformers import AutoTokenizer

    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 49152, (4, 64), generator=g).tolist()
    datasets.Dataset.from_dict({"input_ids": rows}).save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "out"
    summary = train(smollm2_dir, tmp_path / "data", out, max_tokens=256, batch_tokens=256, micro_batch_size=2,
                    teacher_dir=smollm2_dir, progress=False)
    assert summary["steps"] == 1 and summary["gradient_accumulation"] == 2
    assert summary["final_kd"] == pytest.approx(0.0, abs=1e-5)
    assert AutoTokenizer.from_pretrained(out / "final").vocab_size == 49152
