"""A run you can watch: every logged step's loss, tokens/s, model FLOP/s and ETA in
TensorBoard event files (read back as TensorBoard reads them) and as one line in the log; a
resumed run's events continue without repeating a step; `report_to: none` writes none; a bad
or unusable `train.report_to` is one line naming it."""
import re
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
import torch
from transformers import AutoModelForCausalLM, TrainerCallback, TrainerState

from rrt.settings import TENSORBOARD_DIR, SettingError, resolve_config
from rrt.train.budget import model_counts, train_flops_per_token
from rrt.train.monitor import RunMonitor, gpu_peak_flops

from .conftest import cli_error
from .test_train import (  # noqa: F401  models, one_thread: fixtures
    BLOCK,
    FAST,
    Interrupted,
    models,
    one_thread,
    read_csv,
    save_blocks,
)
from .train_run import train

STEPS = 6
LINE = re.compile(r"^step (\d+)/6 loss (\d+\.\d{4}) \| ([\d,]+) tokens/s \| [\d.e+]+ [MGTP]?FLOP/s model "
                  r"\(no MFU: no known peak for cpu\) \| ETA \d+:\d\d:\d\d$")


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar, as TensorBoard shows them (purged steps gone)."""
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _settings(models, tmp_path, **extra):
    _, rec = models
    data = save_blocks(tmp_path / "data", 12, period=5)
    return dict(model_dir=rec, data_dir=data, max_tokens=STEPS * 2 * BLOCK, batch_tokens=2 * BLOCK,
                save_steps=2, warmup_steps=1, seed=1, **FAST, **extra)


def test_event_files_carry_every_logged_step(models, tmp_path, capsys):
    settings = _settings(models, tmp_path)
    out = tmp_path / "out"
    capsys.readouterr()
    train(out_dir=out, **settings)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]

    logged = scalars(out / TENSORBOARD_DIR)
    steps = list(range(1, STEPS + 1))
    for tag in ("train/loss", "train/learning_rate", "train/tokens_per_s", "train/model_flops_per_s", "train/eta_s"):
        assert [s for s, _ in logged[tag]] == steps, tag
    assert "train/mfu" not in logged  # a CPU has no known peak: the achieved FLOP/s stand alone
    rows = read_csv(out / "loss.csv")
    assert [v for _, v in logged["train/loss"]] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-6)
    # Model FLOP/s are tokens/s times `rrt plan`'s training FLOPs per token of this model.
    model = AutoModelForCausalLM.from_pretrained(settings["model_dir"])
    per_token = train_flops_per_token(model_counts(model), BLOCK, checkpointing=False, chunked=False)
    for (_, tokens_per_s), (_, flops) in zip(logged["train/tokens_per_s"], logged["train/model_flops_per_s"]):
        assert tokens_per_s > 0 and flops == pytest.approx(tokens_per_s * per_token, rel=1e-6)
    etas = [v for _, v in logged["train/eta_s"]]
    assert etas[-1] == 0 and all(e > 0 for e in etas[:-1])

    # The log: one line per logged step with the same numbers.
    assert [int(LINE.match(line).group(1)) for line in printed] == steps, printed
    for line, (_, loss), (_, tokens_per_s) in zip(printed, logged["train/loss"], logged["train/tokens_per_s"]):
        match = LINE.match(line)
        assert float(match.group(2)) == pytest.approx(loss, abs=5e-5)
        assert int(match.group(3).replace(",", "")) == round(tokens_per_s)


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12),
                                        ("NVIDIA A100-SXM4-80GB", 312e12), ("Tesla V100-SXM2-32GB", None)])
def test_mfu_divides_by_the_gpus_known_peak(monkeypatch, capsys, name, peak):
    """On a GPU of known peak, MFU = model FLOP/s / (ranks × peak): 2 ranks at 1,000 tokens/s
    and 6e9 FLOPs per token on H100s are 6e12 / (2 × 989e12) = 0.30%."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    assert gpu_peak_flops() == (peak, name)
    monitor = RunMonitor(6e9, world_size=2, peak_flops=peak, device=name)
    state = TrainerState(global_step=0, max_steps=10, num_input_tokens_seen=0)
    monitor.on_train_begin(None, state, None)
    monitor.start_time = monitor.last_time = monitor.last_time - 2.0  # two seconds ago
    state.global_step, state.num_input_tokens_seen = 4, 2000
    logs = {"loss": 1.5}
    monitor.on_log(None, state, None, logs=logs)
    assert logs["tokens_per_s"] == pytest.approx(1000, rel=1e-3)
    assert logs["model_flops_per_s"] == pytest.approx(6e12, rel=1e-3)
    assert logs["eta_s"] == pytest.approx(6 * 2.0 / 4, rel=1e-3)  # 6 steps left at 0.5 s each
    line = capsys.readouterr().out.strip()
    if peak is None:
        assert "mfu" not in logs and f"(no MFU: no known peak for {name})" in line
    else:
        assert logs["mfu"] == pytest.approx(6e12 / (2 * peak), rel=1e-3)
        assert f"6 TFLOP/s model (MFU {logs['mfu']:.1%})" in line
    assert line.startswith("step 4/10 loss 1.5000 | 1,000 tokens/s | ") and line.endswith("| ETA 0:00:03")


class CrashAtStepEnd(TrainerCallback):
    """Dies at the end of `step`, before it is logged: the step before it is in the event
    file, the checkpoint before that on disk."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted


def test_resumed_run_continues_its_events(models, tmp_path):
    """Killed at step 6 with checkpoint-4 on disk and step 5 already logged: the rerun resumes
    from 4 and logs 5 and 6 again; TensorBoard shows each step once, the rerun's values."""
    settings = _settings(models, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        train(out_dir=out, callbacks=[CrashAtStepEnd(6)], **settings)
    assert [s for s, _ in scalars(out / TENSORBOARD_DIR)["train/loss"]] == [1, 2, 3, 4, 5]
    summary = train(out_dir=out, **settings)
    assert summary["resumed_from_step"] == 4
    logged = scalars(out / TENSORBOARD_DIR)
    assert len(list((out / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2  # one file per session
    for tag in ("train/loss", "train/tokens_per_s", "train/eta_s"):
        assert [s for s, _ in logged[tag]] == list(range(1, STEPS + 1)), tag
    rows = read_csv(out / "loss.csv")
    assert [v for _, v in logged["train/loss"]] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-6)

    whole = tmp_path / "whole"  # and the resumed run is still exactly the undisturbed one
    train(out_dir=whole, **settings)
    assert (whole / "loss.csv").read_text() == (out / "loss.csv").read_text()


def test_report_to_none_writes_no_events(models, tmp_path):
    out = tmp_path / "out"
    train(out_dir=out, **_settings(models, tmp_path, report_to="none"))
    assert (out / "loss.csv").is_file() and not (out / TENSORBOARD_DIR).exists()
    assert not list(out.rglob("events.out.tfevents.*"))


def test_bad_report_to_is_one_line_naming_the_key(models, tmp_path, capsys, monkeypatch):
    with pytest.raises(SettingError, match=r"^train\.report_to must be one of tensorboard, wandb, none, got 'tb'$"):
        resolve_config({"variants": "v.tsv", "base_models": {"m": {"source": "tiny"}}, "train": {"report_to": "tb"}})
    _, rec = models
    data = save_blocks(tmp_path / "data", 4)
    argv = ["train", "--model", str(rec), "--data", str(data), "--out", str(tmp_path / "out")]
    error = cli_error(capsys, [*argv, "--settings", '{"report_to": "tb"}'])
    assert "train.report_to must be one of tensorboard, wandb, none, got 'tb'" in error
    # wandb chosen where it is not installed: refused before anything is written.
    monkeypatch.setitem(sys.modules, "wandb", None)  # importlib finds no such module
    error = cli_error(capsys, [*argv, "--report-to", "wandb"])
    assert "train.report_to: wandb is not installed" in error
    assert not (tmp_path / "out").exists()
