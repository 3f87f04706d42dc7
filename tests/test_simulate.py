"""The paper's throughput procedure (`rrt.serve.simulate`): the three schedulers on cases
computed by hand, the exit settings read from an eval JSON, the decode-time measurement on
a tiny model, and `rrt simulate`."""
import json
from pathlib import Path

import pytest

from rrt.model.convert import convert
from rrt.serve.simulate import (
    StepCosts,
    batch_sizes,
    decode_costs,
    depth_wise,
    draw_requests,
    exits_from_eval,
    sequence_wise,
    simulate,
    vanilla,
)

from .conftest import cli_error, make_tiny


def flat(loops: int, max_batch: int, ms: float = 1.0) -> StepCosts:
    """Every block pass costs `ms` whatever its rows."""
    return StepCosts(list(range(1, max_batch + 1)), [ms] * max_batch, loops)


def test_step_cost_is_linear_between_measured_batches():
    costs = StepCosts([1, 2, 4], [1.0, 1.5, 3.5], loops=2)
    assert costs.step_ms(1) == 1.0 and costs.step_ms(3) == 2.5 and costs.max_batch == 4
    with pytest.raises(ValueError, match="outside the measured batch sizes 1..4"):
        costs.step_ms(5)


def test_vanilla_waits_for_the_longest_and_sequence_wise_refills_at_once():
    """Lengths 1, 3, 2 at batch 2, one loop, a pass costing 1 ms for 1 row and 1.5 for 2.
    Vanilla: [1, 3] runs 3 steps of 1.5, then [2] 2 steps of 1 = 6.5 ms. Sequence-wise: the
    first request leaves after step 1 and the third joins: 3 steps of 1.5 = 4.5 ms."""
    costs = StepCosts([1, 2], [1.0, 1.5], loops=1)
    requests = [[1], [1, 1, 1], [1, 1]]
    assert (vanilla(requests, costs).ms, vanilla(requests, costs).steps) == (6.5, 5)
    assert (sequence_wise(requests, costs).ms, sequence_wise(requests, costs).steps) == (4.5, 3)
    assert vanilla(requests, costs).tokens == sequence_wise(requests, costs).tokens == 6
    # two loops: every step runs both (no token leaves early in either)
    two = StepCosts([1, 2], [1.0, 1.5], loops=2)
    assert vanilla(requests, two).ms == 13.0 and sequence_wise(requests, two).ms == 9.0


def test_without_early_exit_depth_wise_is_sequence_wise():
    requests = draw_requests(20, 9, [0.0, 0.0, 1.0], seed=3)
    costs = StepCosts([1, 2, 4], [1.0, 1.7, 2.9], loops=3)
    assert depth_wise(requests, costs).ms == pytest.approx(sequence_wise(requests, costs).ms)
    assert depth_wise(requests, costs).steps == sequence_wise(requests, costs).steps


def test_every_token_leaving_at_loop_1_of_2_doubles_depth_wise_throughput():
    costs = flat(loops=2, max_batch=4)
    requests = draw_requests(16, 12, [1.0, 0.0], seed=0)
    assert all(set(r) == {1} for r in requests)
    rates = simulate(requests, costs)
    assert rates["depth_wise"] == pytest.approx(2 * rates["sequence_wise"])


def test_depth_wise_by_hand():
    """Batch 2, two loops, 1 ms a pass. A's tokens exit at loops 1, 2; B's at 2; C's at 1.
    step 1: A0@1 leaves, B0@1.  step 2: A1@1, B0@2 leaves (B done).  step 3: A1@2 leaves (A
    done), C0@1 leaves (C done): 3 passes for 4 tokens, against sequence-wise's 2 steps of
    2 loops (A, B; then A, C) = 4 passes."""
    costs = flat(loops=2, max_batch=2)
    requests = [[1, 2], [2], [1]]
    served = depth_wise(requests, costs)
    assert (served.tokens, served.steps, served.ms) == (4, 3, 3.0)
    assert sequence_wise(requests, costs).ms == 4.0


def test_requests_share_lengths_across_models_and_draw_exits_by_the_distribution():
    one = draw_requests(200, 10, [1.0], seed=5)
    two = draw_requests(200, 10, [0.25, 0.75], seed=5)
    assert list(map(len, one)) == list(map(len, two)) and all(1 <= len(r) <= 10 for r in one)
    tokens = [t for r in two for t in r]
    assert set(tokens) == {1, 2} and 0.2 < tokens.count(1) / len(tokens) < 0.3


def test_batch_sizes_are_powers_of_two_up_to_the_cap():
    assert batch_sizes(1) == [1] and batch_sizes(8) == [1, 2, 4, 8] and batch_sizes(43) == [1, 2, 4, 8, 16, 32, 43]


def _eval_json(loops=2):
    thresholds = {"max_prob": [{"threshold": 0.5, "exit_at": [0.4, 0.6]}, {"threshold": 0.9, "exit_at": [0.1, 0.9]}]}
    return {"acc_avg": 0.5, "exits": {"loops": loops, "ppl": {"wiki": {"oracle": {"exit_at": [0.7, 0.3]},
                                                                          "thresholds": thresholds}},
                                      "task_thresholds": {"max_prob": [{"threshold": 0.5, "acc_avg": 0.45}]}}}


def test_exit_settings_come_from_the_eval_json():
    settings = exits_from_eval(_eval_json(), "wiki", {"max_prob": [0.5, 0.9, 0.7]})
    assert [(s["exit"], s["exit_at"], s["acc_avg"]) for s in settings] == [
        ("none", None, 0.5), ("oracle", [0.7, 0.3], 0.5), ("max_prob:0.5", [0.4, 0.6], 0.45),
        ("max_prob:0.9", [0.1, 0.9], None)]  # 0.7 was never scored: left out; 0.9 has no task rerun
    assert exits_from_eval({"acc_avg": 0.6}, "wiki", {"max_prob": [0.5]}) == [
        {"exit": "none", "exit_at": None, "acc_avg": 0.6}]
    with pytest.raises(ValueError, match="held-out set 'fiction' was not evaluated at every exit"):
        exits_from_eval(_eval_json(), "fiction", {})


@pytest.fixture(scope="module")
def models():
    base = make_tiny("llama", layers=4)
    return base, convert(base, loops=2, init="stepwise").eval()


def test_decode_costs_are_measured_per_block_at_each_batch(models):
    _, recursive = models
    costs, record = decode_costs(recursive, prefix=4, new_tokens=3, max_batch=3, progress=lambda _: None)
    assert costs.batches == record["batches"] == [1, 2, 3] and costs.loops == record["loops"] == 2
    assert all(t > 0 for t in costs.block_ms)
    assert record["ms_per_token"][2] == pytest.approx(record["block_ms"][2] * 2 / 3, abs=1e-3)


def test_rrt_simulate_writes_every_exit_setting(models, tmp_path, capsys):
    from rrt.cli import main

    base, recursive = models
    base.save_pretrained(tmp_path / "base")
    recursive.save_pretrained(tmp_path / "rec")
    (tmp_path / "eval.json").write_text(json.dumps(_eval_json()))
    out = tmp_path / "sim.json"
    assert main(["simulate", "--model", str(tmp_path / "rec"), "--original", str(tmp_path / "base"), "--eval",
                 str(tmp_path / "eval.json"), "--heldout-set", "wiki", "--exit-thresholds", "max_prob=0.5",
                 "--prefix-tokens", "4", "--new-tokens", "3", "--max-batch", "2", "--requests", "6",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [s["exit"] for s in result["settings"]] == ["none", "oracle", "max_prob:0.5"]
    assert result["model"]["loops"] == 2 and result["original"]["loops"] == 1
    assert result["model"]["batches"] == result["original"]["batches"] == [1, 2]
    none = result["settings"][0]
    assert none["mean_loops"] == 2
    assert none["sequence_wise_tokens_per_s"] == pytest.approx(none["depth_wise_tokens_per_s"])
    assert result["settings"][1]["mean_loops"] == pytest.approx(1.3)
    vanilla = result["original"]["vanilla_tokens_per_s"]
    assert none["x_vanilla"] == pytest.approx(none["depth_wise_tokens_per_s"] / vanilla, rel=1e-3)
    # a model whose loops do not match the eval's exits is refused in one line, nothing written
    out.unlink()
    line = cli_error(capsys, ["simulate", "--model", str(tmp_path / "base"), "--eval", str(tmp_path / "eval.json"),
                              "--heldout-set", "wiki", "--prefix-tokens", "4", "--new-tokens", "3", "--max-batch", "1",
                              "--out", str(out)])
    assert "2 exits for a model of 1 loops" in line and not out.exists()


def test_report_table_puts_simulated_measured_and_paper_side_by_side(tmp_path):
    import pandas as pd

    from rrt.report.simulated import COLUMNS, simulated_table

    for d in ("sim", "tp", "eval"):
        (tmp_path / d).mkdir()
    sim = {"device": "cpu", "dtype": "float32", "model": {"loops": 2, "max_batch": 4},
           "settings": [{"exit": e, "mean_loops": m, "acc_avg": a, "depth_wise_tokens_per_s": r, "x_vanilla": xv,
                         "x_sequence_wise": xs}
                        for e, m, a, r, xv, xs in (("none", 2.0, 0.5, 10.0, 1.2, 1.0),
                                                   ("oracle", 1.4, 0.5, 14.0, 1.7, 1.4),
                                                   ("max_prob:0.5", 1.6, 0.45, 12.0, 1.5, 1.2))]}
    (tmp_path / "sim/ee.json").write_text(json.dumps(sim))
    measured = {"model": "m", "original": "o", "settings": [
        {"setting": "hf_original", "tokens_per_s": 5.0, "speedup": 1.0},
        {"setting": "depthwise", "tokens_per_s": 6.0, "speedup": 1.2},
        {"setting": "exit_max_prob_0.5", "tokens_per_s": 7.0, "speedup": 1.4}]}
    (tmp_path / "tp/ee.json").write_text(json.dumps(measured))
    (tmp_path / "eval/ee.json").write_text(json.dumps({"params": {"non_embedding": 1234}}))
    variants = pd.DataFrame({"variant": ["ee", "other"], "base": ["b", "b"], "rank": [0, 0],
                             "throughput": [True, False], "paper_ref": ["rec_stepwise_b2", "-"]})
    paper = pd.read_csv(Path(__file__).resolve().parents[1] / "config/paper_throughput.tsv", sep="\t")
    table = simulated_table(variants, tmp_path / "sim", tmp_path / "tp", tmp_path / "eval", paper)
    assert list(table.columns) == COLUMNS and list(table["exit"]) == ["none", "oracle", "max_prob:0.5"]
    assert list(table["sim_x_vanilla"]) == [1.2, 1.7, 1.5] and list(table["acc_avg"]) == [50.0, 50.0, 45.0]
    assert table["measured_x_vanilla"].tolist()[::2] == [1.2, 1.4] and pd.isna(table["measured_x_vanilla"][1])
    assert table["measured_x_sequence_wise"].isna().all()  # not the original's own job
    assert (table["paper_x_vanilla"] == 2.66).all() and (table["paper_x_sequence_wise"] == 1.88).all()
    assert (table["non_embedding_params"] == 1234).all() and (table["batch"] == 4).all()
    # the original's own job: its engine run is its sequence-wise batching
    (tmp_path / "tp/ee.json").write_text(json.dumps({**measured, "original": "m"}))
    own = simulated_table(variants, tmp_path / "sim", tmp_path / "tp", tmp_path / "eval", paper)
    assert own["measured_x_sequence_wise"].tolist()[::2] == [1.0, pytest.approx(7 / 6)]


@pytest.mark.parametrize("argv, match", [
    (["--eval", "{d}/missing.json"], "--eval {d}/missing.json: not a readable JSON file"),
    (["--new-tokens", "1"], "--new-tokens must be >= 2"),
    (["--memory-mb", "0"], "--memory-mb must be a finite number > 0, got 0.0"),
    (["--memory-mb", "0.01"], "does not hold the model's weights"),
    (["--heldout-set", "fiction"], "held-out set 'fiction' was not evaluated at every exit"),
])
def test_rrt_simulate_bad_input_is_one_line(models, tmp_path, capsys, argv, match):
    _, recursive = models
    recursive.save_pretrained(tmp_path / "rec")
    (tmp_path / "eval.json").write_text(json.dumps(_eval_json()))
    args = {"--model": str(tmp_path / "rec"), "--eval": str(tmp_path / "eval.json"), "--out": str(tmp_path / "o.json"),
            "--prefix-tokens": "4", "--new-tokens": "3", "--max-batch": "1", "--requests": "2"}
    extra = [a.format(d=tmp_path) for a in argv]
    for flag in [a for a in extra if a in args]:
        args.pop(flag)
    line = cli_error(capsys, ["simulate", *[x for kv in args.items() for x in kv], *extra])
    assert match.format(d=tmp_path) in line
    assert not (tmp_path / "o.json").exists()
