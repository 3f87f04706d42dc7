"""Uptraining: batch arithmetic, learning, KD, resume equivalence, reruns and the CLI."""
import csv
import json
import re
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from rrt.cli import main
from rrt.model.convert import convert
from rrt.model.exits import logit_transform
from rrt.model.modeling import RecursiveForCausalLM
from rrt.settings import TRAIN
from rrt.train.checkpoints import last_checkpoint
from rrt.train.kd import kd_loss
from rrt.train.losses import final_hidden_states, lm_losses
from rrt.train.plan import num_steps, parse_adam_betas, plan_batches, warmup_steps_for

from .conftest import FAMILIES, VOCAB, cli_error, make_tiny
from .train_run import train

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


# --- warmup and AdamW betas ---------------------------------------------------------------
def test_warmup_ratio_gives_the_papers_warmup():
    """Paper: 200 warmup steps at 15B tokens, 800 at 60B, with ~2M-token (2**21) batches."""
    steps_15b, steps_60b = num_steps(15 * 10**9, 2**21), num_steps(60 * 10**9, 2**21)
    assert (steps_15b, steps_60b) == (7153, 28610)
    paper_ratio = 200 / 7153  # = 0.02796 = 800 / 28610 to 4 digits
    assert warmup_steps_for(steps_15b, warmup_ratio=paper_ratio) == 200
    assert warmup_steps_for(steps_60b, warmup_ratio=paper_ratio) == 800
    # the default ratio is the paper's, to the 4 digits that give both exactly
    assert warmup_steps_for(steps_15b) == 200
    assert warmup_steps_for(steps_60b) == 800
    assert TRAIN["warmup_steps"] is None
    assert warmup_steps_for(steps_60b, warmup_steps=50, warmup_ratio=0.5) == 50  # steps win
    assert warmup_steps_for(16) == 0 and warmup_steps_for(16, warmup_ratio=1.0) == 16
    with pytest.raises(ValueError, match=r"warmup_ratio must be in \[0, 1\], got 1.5"):
        warmup_steps_for(100, warmup_ratio=1.5)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        warmup_steps_for(100, warmup_steps=-1)


def test_adam_betas_are_parsed_and_checked():
    assert parse_adam_betas("0.9,0.95") == [0.9, 0.95]
    assert parse_adam_betas((0.8, 0.999)) == [0.8, 0.999]
    assert parse_adam_betas(TRAIN["adam_betas"]) == [0.9, 0.999]
    for bad in ("0.9", "0.9,1.0", "0.9,0.95,0.99", "a,b", "-0.1,0.9", (0.9,), ""):
        with pytest.raises(ValueError, match=r"adam_betas must be two numbers B1,B2 in \[0, 1\)"):
            parse_adam_betas(bad)


class OptimizerSpy(TrainerCallback):
    """Records the optimizer's betas and lr and whether the model checkpoints its layers."""

    def __init__(self):
        self.betas, self.lrs, self.checkpointing = [], [], []

    def on_step_end(self, args, state, control, optimizer=None, model=None, **kwargs):
        self.betas.append({tuple(g["betas"]) for g in optimizer.param_groups})
        self.lrs.append(optimizer.param_groups[0]["lr"])
        self.checkpointing.append(any(getattr(m, "gradient_checkpointing", False) for m in model.modules()))


def test_warmup_and_betas_reach_the_run(models, tmp_path):
    _, rec = models
    data = save_blocks(tmp_path / "data", 16)
    out, spy = tmp_path / "out", OptimizerSpy()
    # 4 steps, warmup 0.5 of them = 2 steps: Trainer's step k (from 1) runs at lr * (k - 1) / 2
    # during warmup (the first step at 0), then cosine from the peak.
    summary = train(rec, data, out, max_tokens=4 * 4 * BLOCK, batch_tokens=4 * BLOCK, warmup_ratio=0.5,
                    adam_betas="0.8,0.95", callbacks=[spy], **FAST)
    lrs = [float(r["lr"]) for r in read_csv(out / "loss.csv")]
    assert lrs[:3] == pytest.approx([0.0, 0.5e-2, 1e-2])
    assert lrs[3] < 1e-2
    assert spy.betas == [{(0.8, 0.95)}] * 4
    assert spy.checkpointing == [False] * 4
    run = json.loads((out / "train_config.json").read_text())
    assert run["warmup_steps"] == 2 and run["adam_betas"] == [0.8, 0.95]
    assert summary["config"]["warmup_steps"] == 2 and summary["config"]["warmup_ratio"] == 0.5
    assert json.loads((out / "train_summary.json").read_text())["config"]["adam_betas"] == [0.8, 0.95]


# --- memory switches: gradient checkpointing and the chunked LM-head loss -------------------
def _student(family: str, recursive: bool):
    model = make_tiny(family, layers=4)
    return convert(model, loops=2, init="average", rank=4) if recursive else model


@pytest.mark.parametrize("recursive", [False, True], ids=["plain", "recursive"])
@pytest.mark.parametrize("family", FAMILIES)
def test_final_hidden_states_give_the_models_logits(family, recursive, ids):
    """The captured head input, through the head (and Gemma 2's soft-capping), gives the
    model's own logits, on every family, plain and recursive."""
    model = _student(family, recursive)
    with torch.no_grad():
        hidden = final_hidden_states(model, ids)
        logits = model(input_ids=ids).logits
        assert hidden.shape == (*ids.shape, model.config.get_text_config().hidden_size)
        again = logit_transform(model)(model.get_output_embeddings()(hidden))
    torch.testing.assert_close(again, logits, rtol=1e-5, atol=1e-6)


def _loss_and_grads(model, ids, teacher, *, chunk_tokens, checkpointing, labels=None):
    model.train().zero_grad()
    if checkpointing:
        model.activation_checkpointing_enable()
    else:
        model.activation_checkpointing_disable()
    ce, kd = lm_losses(model, ids, labels=labels, teacher=teacher, kd_kind="jsd", kd_temperature=2.0,
                       chunk_tokens=chunk_tokens)
    loss = ce if kd is None else 0.3 * ce + 0.7 * kd
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == sum(1 for p in model.parameters() if p.requires_grad)
    return ce.detach(), None if kd is None else kd.detach(), grads


@pytest.mark.parametrize("kd", [False, True], ids=["ce", "ce+kd"])
@pytest.mark.parametrize("recursive", [False, True], ids=["plain", "recursive"])
@pytest.mark.parametrize("family", ["llama", "gemma2"])  # gemma2: final-logit soft-capping
def test_memory_switches_change_no_number(family, recursive, kd, ids):
    """Loss and every parameter's gradient are the same with gradient checkpointing and the
    chunked loss (chunks of 5 of the 22 predicted positions: the last chunk is partial) as
    with the model's own full-logit loss."""
    model = _student(family, recursive)
    teacher = make_tiny(family, layers=4, seed=1).requires_grad_(False) if kd else None
    labels = ids.clone()
    labels[0, 3:9] = -100  # ignored labels: one chunk fully, two partly
    for lab in (None, labels):
        ce_a, kd_a, grads_a = _loss_and_grads(model, ids, teacher, chunk_tokens=None, checkpointing=False,
                                              labels=lab)
        ce_b, kd_b, grads_b = _loss_and_grads(model, ids, teacher, chunk_tokens=5, checkpointing=True, labels=lab)
        torch.testing.assert_close(ce_b, ce_a, rtol=1e-5, atol=1e-6)
        if kd:
            assert kd_a > 0
            torch.testing.assert_close(kd_b, kd_a, rtol=1e-5, atol=1e-6)
        else:
            assert kd_a is None and kd_b is None
        assert grads_a.keys() == grads_b.keys()
        for name in grads_a:
            torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-6, msg=name)


def test_chunked_loss_matches_the_model_and_kd_loss(ids):
    """The chunked CE is the model's own loss and the chunked KD is `kd_loss`, whatever the
    chunk (1 token, uneven, one chunk for all), without gradients too (the teacher's case)."""
    model, teacher = make_tiny("gemma2", layers=2), make_tiny("gemma2", layers=2, seed=1)
    with torch.no_grad():
        out, t = model(input_ids=ids, labels=ids), teacher(input_ids=ids).logits
        expected_kd = kd_loss(out.logits[:, :-1], t[:, :-1], "fkl")
        for chunk in (1, 7, 1000):
            ce, kd = lm_losses(model, ids, teacher=teacher, chunk_tokens=chunk)
            torch.testing.assert_close(ce, out.loss, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(kd, expected_kd, rtol=1e-5, atol=1e-6)


def test_train_with_memory_switches_matches_plain_training(models, tmp_path):
    base, rec = models
    data = save_blocks(tmp_path / "data", 16)
    settings = dict(max_tokens=3 * 4 * BLOCK, batch_tokens=4 * BLOCK, teacher_dir=base, kd_weight=0.5, **FAST)
    train(rec, data, tmp_path / "plain", **settings)
    spy = OptimizerSpy()
    summary = train(rec, data, tmp_path / "lean", gradient_checkpointing=True, loss_chunk_tokens=7,
                    callbacks=[spy], **settings)
    assert spy.checkpointing == [True] * 3
    assert summary["config"]["gradient_checkpointing"] is True and summary["config"]["loss_chunk_tokens"] == 7
    plain, lean = read_csv(tmp_path / "plain" / "loss.csv"), read_csv(tmp_path / "lean" / "loss.csv")
    assert len(plain) == len(lean) == 3
    for a, b in zip(plain, lean):
        for key in ("loss", "ce", "kd", "lr"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5, abs=1e-6), (a["step"], key)


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


def test_early_exit_training_resumes_the_same_run(models, tmp_path):
    """Early-exit training (the aggressive schedule, KD from the final exit) cut after its
    step-2 checkpoint continues to the uninterrupted run's losses at every exit; another
    schedule is another run, refused."""
    _, rec = models
    data = save_blocks(tmp_path / "data", 10, period=5)
    settings = dict(max_tokens=4 * 4 * BLOCK, batch_tokens=4 * BLOCK, save_steps=2, warmup_steps=1, seed=3,
                    exit_weights="aggressive", exit_kd_weight=0.5, **FAST)
    train(rec, data, tmp_path / "whole", **settings)
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        train(rec, data, cut, callbacks=[CrashAfterSave(2)], **settings)
    with pytest.raises(ValueError, match="exit_weights"):
        train(rec, data, cut, **{**settings, "exit_weights": "uniform"})
    assert train(rec, data, cut, **settings)["resumed_from_step"] == 2
    rows_a, rows_b = read_csv(tmp_path / "whole" / "loss.csv"), read_csv(cut / "loss.csv")
    assert len(rows_a) == len(rows_b) == 4
    for ra, rb in zip(rows_a, rows_b):
        for key in ("loss", "ce_exit1", "ce_exit2", "kd"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-6, abs=1e-7), (ra["step"], key)


def test_resume_refuses_other_settings(models, tmp_path):
    _, rec = models
    data = save_blocks(tmp_path / "data", 8)
    settings = dict(batch_tokens=2 * BLOCK, save_steps=1, **FAST)
    with pytest.raises(Interrupted):
        train(rec, data, tmp_path / "out", max_tokens=4 * BLOCK, callbacks=[CrashAfterSave(1)], **settings)
    with pytest.raises(ValueError, match="max_tokens=64, not 128"):
        train(rec, data, tmp_path / "out", max_tokens=8 * BLOCK, **settings)
    with pytest.raises(ValueError, match=r"adam_betas=\[0.9, 0.999\], not \[0.9, 0.95\]"):
        train(rec, data, tmp_path / "out", max_tokens=4 * BLOCK, adam_betas=(0.9, 0.95), **settings)
    with pytest.raises(ValueError, match="warmup_steps=0, not 1"):
        train(rec, data, tmp_path / "out", max_tokens=4 * BLOCK, warmup_steps=1, **settings)


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
               "--batch-tokens", "32", "--micro-batch-size", "2", "--save-steps", "1", "--warmup-steps", "3",
               "--adam-betas", "0.85,0.95", "--gradient-checkpointing", "--loss-chunk-tokens", "8"])
    assert rc == 0, capsys.readouterr().err
    assert AutoTokenizer.from_pretrained(out / "final").convert_ids_to_tokens([5]) == ["t5"]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 1
    config = summary["config"]
    assert (config["warmup_steps"], config["warmup_ratio"], config["adam_betas"]) == (3, None, [0.85, 0.95])
    assert config["gradient_checkpointing"] is True and config["loss_chunk_tokens"] == 8


@pytest.mark.parametrize("extra, culprit", [
    (["--model", "{tmp}/missing"], "--model directory"),
    (["--data", "{tmp}/missing"], "--data directory"),
    (["--batch-tokens", "8"], "smaller than one block"),
    (["--kd-loss", "rkl"], "--kd-loss needs --teacher"),
    (["--kd-weight", "0.3"], "--kd-weight needs --teacher"),
    (["--teacher", "{base}", "--kd-weight", "1.5"], "--kd-weight must be in [0, 1], got 1.5"),
    (["--teacher", "{tmp}/missing"], "--teacher directory"),
    (["--deepspeed", "{tmp}/ds.json"], "--deepspeed file"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["--adam-betas", "0.9"], "--adam-betas must be two numbers B1,B2 in [0, 1), got '0.9'"),
    (["--adam-betas", "0.9,1"], "--adam-betas must be two numbers B1,B2 in [0, 1)"),
    (["--adam-betas", "0.9,x"], "--adam-betas must be two numbers B1,B2 in [0, 1)"),
    (["--warmup-ratio", "1.5"], "--warmup-ratio must be in [0, 1], got 1.5"),
    (["--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
    (["--loss-chunk-tokens", "0"], "--loss-chunk-tokens must be >= 1"),
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


def test_cli_rejects_an_unknown_kd_loss(models, tmp_path, capsys):
    """--kd-loss has argparse choices: argparse itself rejects a bad one (usage + error)."""
    base, rec = models
    data = save_blocks(tmp_path / "data", 4)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", str(rec), "--data", str(data), "--out", str(tmp_path / "out"),
              "--teacher", str(base), "--kd-loss", "kl"])
    assert exit_.value.code == 2
    assert "argument --kd-loss: invalid choice: 'kl'" in capsys.readouterr().err


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


@pytest.mark.parametrize("setting, message", [
    ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
    ({"lr": float("inf")}, "lr must be a finite number > 0, got inf"),
    ({"weight_decay": float("nan")}, "weight_decay must be a finite number >= 0, got nan"),
])
def test_library_refuses_non_finite_settings_before_creating_anything(models, tmp_path, setting, message):
    """`train()` itself, not only the CLI, refuses NaN and infinite rates (NaN passes every
    `<` and `>` test against a bound) and writes nothing."""
    _, rec = models
    data = save_blocks(tmp_path / "data", 8)
    with pytest.raises(ValueError, match=re.escape(message)):
        train(rec, data, tmp_path / "out", max_tokens=2 * BLOCK, batch_tokens=2 * BLOCK, **{**FAST, **setting})
    assert not (tmp_path / "out").exists()
