"""The report's early-exit tables and figures, from eval JSONs with an "exits" key."""
import json

import pandas as pd
import pytest

from rrt.report.aggregate import aggregate
from rrt.report.early_exit import EXIT_FIGURES, THRESHOLD_COLUMNS

VARIANTS = """variant\tkind\tbase\tinit\tloops\tsharing\trank\tkd\ttokens\tparent\tearly_exit\tpaper_ref
rec\trecursive\tb\tstepwise\t2\tcycle\t0\tfalse\tdefault\t-\t-\trec_stepwise_b2
ee\trecursive\tb\tstepwise\t2\tcycle\t0\tfalse\tdefault\trec\taggressive-kd\tee_aggressive_kd
ee-notasks\trecursive\tb\tstepwise\t2\tcycle\t0\tfalse\tdefault\trec\tce\tee_w0.3
"""
PAPER = ("paper_ref\tpaper_model\tpaper_setting\tpaper_acc_avg\tpaper_acc_avg_exit1\n"
         "rec_stepwise_b2\tGemma 2B\trec\t51.7\t\n"
         "ee_aggressive_kd\tGemma 2B\tee aggressive\t52.6\t48.0\n"
         "ee_w0.3\tGemma 2B\tee w0.3\t\t48.5\n")


def _accuracies(lambada: float, piqa: float) -> dict:
    return {"acc_lambada": lambada, "acc_lambada_stderr": 0.1, "acc_piqa": piqa, "acc_piqa_stderr": 0.1,
            "acc_avg": (lambada + piqa) / 2, "acc_avg_stderr": 0.05}


def _threshold(t: float, exit_at: list[float], ppl: float, acc: float, agree: float) -> dict:
    return {"threshold": t, "ppl": ppl, "nll": 3.0, "acc": acc, "exit_at": exit_at, "exit_rate": 1 - exit_at[-1],
            "mean_loops": 1 + exit_at[-1], "agree": agree}


def _exit_ppl(first: float, final: float, scale: float) -> dict:
    """One held-out set: exit 1 and the final exit, the oracle, two max_prob thresholds and one entropy."""
    return {"tokens": 2040,
            "exits": [{"ppl": first, "nll": 3.4, "acc": 0.25 * scale}, {"ppl": final, "nll": 3.0, "acc": 0.5 * scale}],
            "oracle": {"agree": [0.625, 1.0], "exit_at": [0.625, 0.375], "mean_loops": 1.375},
            "thresholds": {"max_prob": [_threshold(0.5, [0.5, 0.5], 21.0, 0.375, 0.75),
                                        _threshold(0.9, [0.25, 0.75], 20.5, 0.4375, 0.875)],
                           "entropy": [_threshold(1.0, [0.125, 0.875], 20.25, 0.46875, 0.9375)]}}


def _result(accs: dict, exits: dict | None = None) -> dict:
    out = {"ppl_wiki": 20.0, "ppl_science": 40.0, "params": {"non_embedding": 500}, **accs}
    return out | ({"exits": exits} if exits else {})


EXITS = {"loops": 2, "depths": [14, 29],
         "ppl": {"wiki": _exit_ppl(30.0, 20.0, 1.0), "science": _exit_ppl(60.0, 40.0, 0.5)},
         "tasks": [{"exit": 1, **_accuracies(0.25, 0.5)}, {"exit": 2, **_accuracies(0.5, 0.75)}],
         "task_thresholds": {"max_prob": [{"threshold": 0.6, **_accuracies(0.375, 0.625), "exit_rate": 0.25},
                                          {"threshold": 0.9, **_accuracies(0.5, 0.5)}]}}
NO_TASKS = {"loops": 2, "depths": [14, 29], "ppl": {"wiki": _exit_ppl(32.0, 22.0, 1.0)}}


def _write_inputs(root, results: dict) -> None:
    (root / "variants.tsv").write_text(VARIANTS)
    (root / "paper.tsv").write_text(PAPER)
    for d in ("eval", "train"):
        (root / d).mkdir()
    for name, result in results.items():
        (root / "eval" / f"{name}.json").write_text(json.dumps(result))


def _aggregate(root) -> tuple[pd.DataFrame, pd.DataFrame]:
    aggregate(root / "variants.tsv", root / "paper.tsv", root / "eval", root / "train", root / "tables",
              root / "figures")
    return pd.read_csv(root / "tables/early_exit.csv"), pd.read_csv(root / "tables/exit_thresholds.csv")


@pytest.fixture
def tables(tmp_path):
    _write_inputs(tmp_path, {"rec": _result(_accuracies(0.5, 0.5)), "ee": _result(_accuracies(0.5, 0.75), EXITS),
                             "ee-notasks": _result({}, NO_TASKS)})
    return (tmp_path, *_aggregate(tmp_path))


def test_exit_table_columns_and_rows(tables):
    _, per_exit, _ = tables
    assert list(per_exit.columns) == [
        "variant", "base", "parent", "early_exit", "exit", "loops", "depth", "ppl_wiki", "ppl_science",
        "next_token_acc_wiki", "next_token_acc_science", "oracle_agree_wiki", "oracle_agree_science",
        "acc_lambada", "acc_piqa", "acc_avg", "acc_avg_se", "acc_avg_vs_final", "paper_ref", "paper_acc_avg",
        "paper_acc_avg_vs_final"]
    # one row per exit of each variant evaluated at every exit; rec (no "exits") is left out
    assert per_exit[["variant", "exit", "depth"]].values.tolist() == [
        ["ee", 1, 14], ["ee", 2, 29], ["ee-notasks", 1, 14], ["ee-notasks", 2, 29]]
    assert per_exit["parent"].tolist() == ["rec"] * 4
    assert per_exit["early_exit"].tolist() == ["aggressive-kd", "aggressive-kd", "ce", "ce"]
    assert per_exit["loops"].tolist() == [2] * 4


def test_exit_table_values_in_percent(tables):
    _, per_exit, _ = tables
    ee = per_exit[per_exit.variant == "ee"].set_index("exit")
    assert ee["ppl_wiki"].tolist() == [30.0, 20.0] and ee["ppl_science"].tolist() == [60.0, 40.0]
    assert ee["next_token_acc_wiki"].tolist() == [25.0, 50.0]
    assert ee["next_token_acc_science"].tolist() == [12.5, 25.0]
    assert ee["oracle_agree_wiki"].tolist() == [62.5, 100.0]
    assert ee["acc_lambada"].tolist() == [25.0, 50.0] and ee["acc_piqa"].tolist() == [50.0, 75.0]
    assert ee["acc_avg"].tolist() == [37.5, 62.5] and ee["acc_avg_se"].tolist() == [5.0, 5.0]
    assert ee["acc_avg_vs_final"].tolist() == [-25.0, 0.0]


def test_exit_table_paper_per_exit(tables):
    _, per_exit, _ = tables
    ee = per_exit[per_exit.variant == "ee"].set_index("exit")
    assert ee["paper_ref"].tolist() == ["ee_aggressive_kd"] * 2
    assert ee["paper_acc_avg"].tolist() == [48.0, 52.6]  # exit 1: paper_acc_avg_exit1, final: paper_acc_avg
    assert ee["paper_acc_avg_vs_final"].tolist() == [pytest.approx(48.0 - 52.6), 0.0]
    notasks = per_exit[per_exit.variant == "ee-notasks"].set_index("exit")
    assert notasks.loc[1, "paper_acc_avg"] == 48.5 and pd.isna(notasks.loc[2, "paper_acc_avg"])
    assert notasks["paper_acc_avg_vs_final"].isna().all()  # the paper gives no final exit for this row


def test_exit_table_without_tasks_has_nan_accuracies(tables):
    _, per_exit, _ = tables
    notasks = per_exit[per_exit.variant == "ee-notasks"]
    assert notasks[["acc_lambada", "acc_piqa", "acc_avg", "acc_avg_se", "acc_avg_vs_final"]].isna().all().all()
    assert notasks["ppl_wiki"].tolist() == [32.0, 22.0] and notasks["ppl_science"].isna().all()


def test_threshold_table_rows(tables):
    _, _, thresholds = tables
    assert list(thresholds.columns) == THRESHOLD_COLUMNS == [
        "variant", "set", "criterion", "threshold", "exit_rate", "mean_loops", "ppl", "next_token_acc", "agree",
        "acc_avg", "acc_avg_se"]
    keys = thresholds[["variant", "set", "criterion"]].values.tolist()
    per_set = [["max_prob"], ["max_prob"], ["entropy"], ["oracle"]]
    assert keys == ([["ee", "wiki", c] for [c] in per_set] + [["ee", "science", c] for [c] in per_set]
                    + [["ee", "tasks", "max_prob"]] * 2 + [["ee-notasks", "wiki", c] for [c] in per_set])
    first = thresholds.iloc[0]
    assert first[["threshold", "exit_rate", "mean_loops", "ppl", "next_token_acc", "agree"]].tolist() == [
        0.5, 50.0, 1.5, 21.0, 37.5, 75.0]
    assert pd.isna(first["acc_avg"]) and pd.isna(first["acc_avg_se"])
    entropy = thresholds.iloc[2]
    assert entropy[["threshold", "exit_rate", "next_token_acc", "agree"]].tolist() == [1.0, 12.5, 46.875, 93.75]


def test_threshold_table_oracle_and_task_rows(tables):
    _, _, thresholds = tables
    oracle = thresholds[(thresholds.variant == "ee") & (thresholds.criterion == "oracle")].set_index("set")
    assert oracle["exit_rate"].tolist() == [62.5, 62.5] and oracle["mean_loops"].tolist() == [1.375, 1.375]
    assert oracle["agree"].tolist() == [100.0, 100.0] and oracle["threshold"].isna().all()
    # the oracle's top-1 prediction is the final exit's, so is its next-token accuracy
    assert oracle["next_token_acc"].tolist() == [50.0, 25.0] and oracle["ppl"].isna().all()
    tasks = thresholds[thresholds.set == "tasks"]
    assert tasks["threshold"].tolist() == [0.6, 0.9]
    assert tasks["acc_avg"].tolist() == [50.0, 50.0] and tasks["acc_avg_se"].tolist() == [5.0, 5.0]
    assert tasks["exit_rate"].iloc[0] == 25.0 and pd.isna(tasks["exit_rate"].iloc[1])  # absent: NaN
    assert tasks[["mean_loops", "ppl", "next_token_acc", "agree"]].isna().all().all()


def test_markdown_tables_and_figures(tables):
    root, _, _ = tables
    markdown = (root / "tables/early_exit.md").read_text()
    assert markdown.startswith("| variant") and "37.5 ± 5.0" in markdown
    threshold_md = (root / "tables/exit_thresholds.md").read_text()
    assert "50.0 ± 5.0" in threshold_md and "nan ±" not in threshold_md
    for name in EXIT_FIGURES:
        assert (root / "figures" / name).stat().st_size > 1000


def test_no_early_exit_variant_writes_header_only_tables(tmp_path):
    _write_inputs(tmp_path, {name: _result(_accuracies(0.5, 0.5)) for name in ("rec", "ee", "ee-notasks")})
    per_exit, thresholds = _aggregate(tmp_path)
    assert per_exit.empty and thresholds.empty
    assert list(per_exit.columns) == [
        "variant", "base", "parent", "early_exit", "exit", "loops", "depth", "acc_avg", "acc_avg_se",
        "acc_avg_vs_final", "paper_ref", "paper_acc_avg", "paper_acc_avg_vs_final"]
    assert list(thresholds.columns) == THRESHOLD_COLUMNS
    assert (tmp_path / "tables/early_exit.md").read_text().startswith("| variant")
    for name in EXIT_FIGURES:
        assert (tmp_path / "figures" / name).stat().st_size > 1000
