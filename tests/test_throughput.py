"""The throughput stage: `rrt throughput` (held-out prompts, settings measured side by side)
and its report table and figure (`rrt.report.throughput`)."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from rrt.model.convert import convert
from rrt.report.throughput import COLUMNS, throughput_figure, throughput_table
from rrt.serve.engine import DepthwiseEngine
from rrt.serve.throughput import (
    agreement,
    batch_within,
    heldout_prompts,
    hf_cache_bytes,
    measure_throughput,
    weight_bytes,
)

from .conftest import VOCAB, cli_error, make_tiny


def _store(path, docs):
    """A token store in `rrt tokenize`'s layout (tokens.bin, documents.npy, manifest.json)."""
    path.mkdir(parents=True)
    tokens = np.concatenate([np.asarray(d, dtype=np.uint16) for d in docs])
    tokens.tofile(path / "tokens.bin")
    np.save(path / "documents.npy", np.cumsum([len(d) for d in docs]).astype(np.int64))
    (path / "manifest.json").write_text(json.dumps({"documents": len(docs), "tokens": int(len(tokens)),
                                                    "dtype": "uint16"}))
    return path


def _docs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, n).tolist() for n in lengths]


def test_prompts_are_consecutive_pieces_of_heldout_documents(tmp_path):
    docs = _docs([30, 5, 40, 25])
    store = _store(tmp_path / "heldout", docs)
    prompts = heldout_prompts(store, 5, (10, 20), seed=1)
    assert len(prompts) == 5 and all(10 <= len(p) <= 20 for p in prompts)
    stream = [t for d in docs for t in d]
    pieces = [t for p in prompts for t in p]
    # in order, never across a document boundary, each document's pieces back to back
    at, ends = 0, np.cumsum([len(d) for d in docs])
    for p in prompts:
        start = next(i for i in range(at, len(stream)) if stream[i:i + len(p)] == p)
        assert not any(start < e < start + len(p) for e in ends)
        at = start + len(p)
    assert pieces[:len(prompts[0])] == docs[0][:len(prompts[0])]
    assert heldout_prompts(store, 5, (10, 20), seed=1) == prompts
    assert [len(p) for p in heldout_prompts(store, 5, (10, 20), seed=2)] != [len(p) for p in prompts]
    with pytest.raises(ValueError, match="fewer than the 9 asked for"):
        heldout_prompts(store, 9, (10, 20))


def test_agreement_counts_each_sequence_up_to_its_first_difference():
    assert agreement([[1, 2, 3, 4]], [[1, 2, 3, 4]]) == 1.0
    assert agreement([[1, 9, 3, 4], [5, 6]], [[1, 2, 3, 4], [5, 6]]) == pytest.approx(3 / 6)  # 1 + 2 of 6
    assert agreement([[7]], [[1, 2]]) == 0.0


@pytest.fixture(scope="module")
def models():
    base = make_tiny("llama", layers=4)
    return base, convert(base, loops=2, init="stepwise").eval()


def test_a_memory_budget_buys_the_recursive_model_a_larger_batch(models):
    """The paper's max batch: the budget the full-size model fills at batch 3 holds more
    sequences of the recursive model (half the layers' weights, the same KV per token), and
    what the engine allocates at that batch fits it while one more sequence would not."""
    full, recursive = models
    length = 40
    budget = weight_bytes(full) + DepthwiseEngine(full, max_batch=3, max_len=length).cache.nbytes()
    assert batch_within(full, budget, length) == 3
    batch = batch_within(recursive, budget, length)
    held = lambda n: weight_bytes(recursive) + DepthwiseEngine(recursive, max_batch=n, max_len=length).cache.nbytes()  # noqa: E731
    assert batch > 3 and held(batch) <= budget < held(batch + 1)
    assert batch_within(recursive, budget, length, requests=4) == 4
    with pytest.raises(ValueError, match="does not hold the model's weights and one sequence of 40 tokens"):
        batch_within(full, weight_bytes(full), length)


def test_every_setting_measured_against_the_originals_generate(models, tmp_path):
    """hf_original is the denominator (speed-up 1); the engine without exit runs both loops
    of every token; a threshold every token reaches exits all at loop 1, an unreachable
    one changes no token."""
    base, recursive = models
    prompts = heldout_prompts(_store(tmp_path / "h", _docs([20] * 4)), 4, (5, 12))
    result = measure_throughput(recursive, base, prompts, new_tokens=6, batch=2,
                                exit_thresholds={"max_prob": [1e-9, 1.0]}, progress=lambda _: None)
    settings = {s["setting"]: s for s in result["settings"]}
    assert list(settings) == ["hf_original", "hf", "depthwise", "exit_max_prob_1e-09", "exit_max_prob_1"]
    assert settings["hf_original"]["speedup"] == 1.0
    for s in settings.values():
        assert s["tokens"] == 4 * 6 and s["tokens_per_s"] > 0
        assert s["speedup"] == pytest.approx(s["tokens_per_s"] / settings["hf_original"]["tokens_per_s"], rel=1e-3)
    assert settings["depthwise"]["mean_loops"] == 2.0 and settings["hf"]["mean_loops"] is None
    assert settings["exit_max_prob_1e-09"]["mean_loops"] == 1.0
    assert settings["exit_max_prob_1"]["mean_loops"] == 2.0
    assert settings["exit_max_prob_1"]["agreement_with_no_exit"] == 1.0
    assert settings["exit_max_prob_1"]["criterion"] == "max_prob" and settings["exit_max_prob_1"]["exit_kv"] == "continue"
    # the recursive model holds half the layers' weights of the original
    assert settings["hf"]["memory_mb"] < settings["hf_original"]["memory_mb"]
    # held-out quality: each prompt's second half given its first, as the model itself scores it
    nll = []
    for p in prompts:
        with torch.no_grad():
            logp = torch.log_softmax(recursive(input_ids=torch.tensor([p])).logits[0], -1)
        half = len(p) // 2
        nll += [-logp[i - 1, p[i]].item() for i in range(half, len(p))]
    assert settings["depthwise"]["heldout_ppl"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-4)
    assert settings["exit_max_prob_1"]["heldout_ppl"] == settings["depthwise"]["heldout_ppl"]
    assert settings["exit_max_prob_1e-09"]["heldout_ppl"] != settings["depthwise"]["heldout_ppl"]
    assert "heldout_ppl" not in settings["hf"]
    assert result["prompt_tokens"] == [min(map(len, prompts)), max(map(len, prompts))]
    assert result["machine"]["device"] == "cpu"
    assert {s["batch"] for s in settings.values()} == {2} and not result["same_memory"]


def test_same_memory_runs_each_setting_at_its_largest_batch(models, tmp_path):
    """The original at --max-batch sets the budget; the recursive model's settings fill it
    with more requests (and score the same held-out perplexity as at the smaller batch),
    never more than there are prompts."""
    base, recursive = models
    prompts = heldout_prompts(_store(tmp_path / "h", _docs([20] * 8)), 8, (5, 12))
    runs = {same: measure_throughput(recursive, base, prompts, new_tokens=40, batch=2, same_memory=same,
                                     progress=lambda _: None) for same in (False, True)}
    settings = {s["setting"]: s for s in runs[True]["settings"]}
    length = max(map(len, prompts)) + 40
    assert settings["hf_original"]["batch"] == 2
    assert settings["hf"]["batch"] == settings["depthwise"]["batch"] == batch_within(
        recursive, weight_bytes(base) + hf_cache_bytes(base, 2, length), length, len(prompts))
    assert 2 < settings["depthwise"]["batch"] < len(prompts)
    assert max(s["memory_mb"] for s in settings.values()) <= runs[True]["memory_budget_mb"]
    assert runs[True]["memory_budget_mb"] == runs[False]["memory_budget_mb"] == settings["hf_original"]["memory_mb"]
    assert settings["depthwise"]["heldout_ppl"] == next(
        s for s in runs[False]["settings"] if s["setting"] == "depthwise")["heldout_ppl"]
    short = measure_throughput(recursive, base, prompts, new_tokens=1, batch=2, same_memory=True,
                               progress=lambda _: None)
    assert [s["batch"] for s in short["settings"]] == [2, len(prompts), len(prompts)]


def _eval_json(acc, thresholds=None):
    out = {"acc_avg": acc, "acc_avg_stderr": 0.01}
    if thresholds:
        out["exits"] = {"task_thresholds": {"max_prob": [{"threshold": t, "acc_avg": a, "acc_avg_stderr": 0.02}
                                                         for t, a in thresholds.items()]}}
    return out


def _setting(name, rate, **extra):
    return {"setting": name, "engine": "hf" if name.startswith("hf") else "depthwise", "tokens_per_s": rate,
            "speedup": rate / 100, "mean_loops": None if name.startswith("hf") else 2.0, "memory_mb": 10.0, **extra}


def test_table_pairs_each_setting_with_the_accuracy_of_what_it_generates(tmp_path):
    variants = pd.DataFrame({"variant": ["orig", "rec", "ee", "other"], "kind": ["original", "recursive"] * 2,
                             "base": ["b"] * 4, "throughput": [False, True, True, False]})
    (tmp_path / "eval").mkdir()
    (tmp_path / "tp").mkdir()
    for name, result in (("orig", _eval_json(0.40)), ("rec", _eval_json(0.35)),
                         ("ee", _eval_json(0.36, {0.1: 0.30, 0.5: 0.34})), ("other", _eval_json(0.1))):
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps(result))
    machine = {"device": "cpu", "dtype": "torch.float32"}
    (tmp_path / "tp/rec.json").write_text(json.dumps({"machine": machine, "settings": [
        _setting("hf_original", 100), _setting("hf", 101), _setting("depthwise", 95)]}))
    (tmp_path / "tp/ee.json").write_text(json.dumps({"machine": machine, "settings": [
        _setting("hf_original", 100), _setting("depthwise", 90),
        _setting("exit_max_prob_0.5", 120, criterion="max_prob", threshold=0.5, agreement_with_no_exit=0.75),
        _setting("exit_max_prob_0.2", 150, criterion="max_prob", threshold=0.2, agreement_with_no_exit=0.5)]}))
    table = throughput_table(variants, tmp_path / "tp", tmp_path / "eval")
    assert list(table.columns) == COLUMNS
    got = {(r.variant, r.setting): r for r in table.itertuples()}
    assert list(got) == [("rec", "hf_original"), ("rec", "hf"), ("rec", "depthwise"), ("ee", "hf_original"),
                         ("ee", "depthwise"), ("ee", "exit_max_prob_0.5"), ("ee", "exit_max_prob_0.2")]
    assert got["rec", "hf_original"].acc_avg == pytest.approx(40.0)  # the original's own
    assert got["rec", "depthwise"].acc_avg == pytest.approx(35.0) and got["rec", "hf"].acc_avg == pytest.approx(35.0)
    assert got["ee", "exit_max_prob_0.5"].acc_avg == pytest.approx(34.0)
    assert got["ee", "exit_max_prob_0.5"].acc_avg_se == pytest.approx(2.0)
    assert got["ee", "exit_max_prob_0.5"].agreement_with_no_exit == pytest.approx(75.0)
    assert math.isnan(got["ee", "exit_max_prob_0.2"].acc_avg)  # no task run at 0.2
    assert got["ee", "exit_max_prob_0.2"].speedup == 1.5 and got["ee", "depthwise"].dtype == "float32"
    throughput_figure(table, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_no_variant_asking_gives_a_header_only_table_and_a_figure(tmp_path):
    variants = pd.DataFrame({"variant": ["a"], "kind": ["original"], "base": ["b"], "throughput": [False]})
    table = throughput_table(variants, tmp_path / "missing", tmp_path / "missing")
    assert table.empty and list(table.columns) == COLUMNS
    throughput_figure(table, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").is_file()


# --- rrt throughput ------------------------------------------------------------------------
@pytest.fixture
def dirs(models, tmp_path):
    base, recursive = models
    base.save_pretrained(tmp_path / "base")
    recursive.save_pretrained(tmp_path / "rec")
    _store(tmp_path / "heldout", _docs([30] * 5))
    return tmp_path


def test_rrt_throughput_writes_every_setting(dirs, capsys):
    from rrt.cli import main

    out = dirs / "tp.json"
    assert main(["throughput", "--model", str(dirs / "rec"), "--original", str(dirs / "base"), "--heldout",
                 str(dirs / "heldout"), "--out", str(out), "--prompts", "3", "--prompt-tokens", "8,16",
                 "--max-new-tokens", "4", "--max-batch", "2", "--exit-thresholds", "max_prob=0.5,1"]) == 0
    result = json.loads(out.read_text())
    assert [s["setting"] for s in result["settings"]] == ["hf_original", "hf", "depthwise", "exit_max_prob_0.5",
                                                          "exit_max_prob_1"]
    assert result["prompts"] == 3 and result["new_tokens"] == 4 and result["batch"] == 2
    assert not result["same_memory"] and {s["batch"] for s in result["settings"]} == {2}
    assert 8 <= result["prompt_tokens"][0] <= result["prompt_tokens"][1] <= 16
    assert result["original"] == str(dirs / "base")
    # without --original the model is its own reference: no separate hf setting
    assert main(["throughput", "--model", str(dirs / "base"), "--heldout", str(dirs / "heldout"), "--out", str(out),
                 "--prompts", "2", "--max-new-tokens", "2", "--prompt-tokens", "8,8"]) == 0
    assert [s["setting"] for s in json.loads(out.read_text())["settings"]] == ["hf_original", "depthwise"]
    # --same-memory: the recursive model's settings serve more requests at once in the original's memory
    assert main(["throughput", "--model", str(dirs / "rec"), "--original", str(dirs / "base"), "--heldout",
                 str(dirs / "heldout"), "--out", str(out), "--prompts", "3", "--prompt-tokens", "8,16",
                 "--max-new-tokens", "4", "--max-batch", "1", "--same-memory"]) == 0
    result = json.loads(out.read_text())
    assert result["same_memory"] and [s["batch"] for s in result["settings"]] == [1, 3, 3]


@pytest.mark.parametrize("argv, match", [
    (["--heldout", "{d}/base"], "is not a token store"),
    (["--prompt-tokens", "20,10"], "--prompt-tokens must be two integers MIN,MAX with 1 <= MIN <= MAX, got [20, 10]"),
    (["--prompt-tokens", "ten"], "--prompt-tokens must be two integers MIN,MAX with 1 <= MIN <= MAX, got 'ten'"),
    (["--prompts", "90"], "fewer than the 90 asked for"),
    (["--model", "{d}/base", "--exit-thresholds", "max_prob=0.5"], "is not a recursive model"),
    (["--exit-thresholds", "max_prob=2"],
     "--exit-thresholds max_prob must be a list of items, each in (0, 1], got '2'"),
    (["--max-batch", "0"], "--max-batch must be >= 1"),
])
def test_rrt_throughput_bad_input(dirs, capsys, argv, match):
    args = {"--model": str(dirs / "rec"), "--heldout": str(dirs / "heldout"), "--out": str(dirs / "o.json"),
            "--max-new-tokens": "2", "--prompts": "2", "--prompt-tokens": "8,16"}
    extra = [a.format(d=dirs) for a in argv]
    for flag in [a for a in extra if a in args]:
        args.pop(flag)
    line = cli_error(capsys, ["throughput", *[x for kv in args.items() for x in kv], *extra])
    assert match in line
    assert not (dirs / "o.json").exists()
