"""Aggregation of per-variant results into tables and figures."""
import json

import pandas as pd
import pytest

from rrt.report.aggregate import ACC_COLUMNS, aggregate
from rrt.report.figures import FIGURES
from rrt.settings import TASKS

from .conftest import cli_error

VARIANTS = """variant\tkind\tbase\tinit\tloops\tsharing\trank\tkd\ttokens\tpaper_ref
orig\toriginal\tb\t-\t1\t-\t0\tfalse\t0\tfull_original
rec\trecursive\tb\tstepwise\t2\tcycle\t0\tfalse\tdefault\trec_stepwise_b2
rel\trecursive\tb\taverage\t2\tcycle\t8\tfalse\tdefault\trelaxed_r64
"""
PAPER = ("paper_ref\tpaper_setting\tpaper_non_embedding_B\tpaper_tokens\tpaper_acc_avg\n"
         "full_original\tGemma\t1.98\t0\t61.7\nrec_stepwise_b2\tGemma rec\t0.99\t15B\t51.7\n")


@pytest.fixture
def results(tmp_path):
    (tmp_path / "variants.tsv").write_text(VARIANTS)
    (tmp_path / "paper.tsv").write_text(PAPER)
    for d in ("eval", "train"):
        (tmp_path / d).mkdir()
    for i, (name, params) in enumerate((("orig", 1000), ("rec", 500), ("rel", 600))):
        accs = {f"acc_{t}": 0.5 + 0.01 * i + 0.001 * j for j, t in enumerate(TASKS)}
        accs["acc_avg"] = sum(accs.values()) / len(TASKS)
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps({"ppl_wiki": 10.0 + i, "ppl_fiction": 20.0 + i,
                                                                  "params": {"non_embedding": params}, **accs}))
        if name != "orig":
            (tmp_path / "train" / name).mkdir()
            (tmp_path / "train" / name / "train_summary.json").write_text(json.dumps({"tokens": 4096}))
            pd.DataFrame({"step": [1, 2], "tokens_seen": [2048, 4096], "loss": [3.0, 2.5 - i * 0.1]}).to_csv(
                tmp_path / "train" / name / "loss.csv", index=False)
    return tmp_path


def test_summary_table(results):
    summary = aggregate(results / "variants.tsv", results / "paper.tsv", results / "eval", results / "train", results / "tables", results / "figures")
    assert list(summary.columns) == ["variant", "non_embedding_params", "tokens", "ppl_fiction", "ppl_wiki",
                                     *ACC_COLUMNS]
    written = pd.read_csv(results / "tables/summary.csv")
    assert written["variant"].tolist() == ["orig", "rec", "rel"]
    assert written["tokens"].tolist() == [0, 4096, 4096]
    assert written["non_embedding_params"].tolist() == [1000, 500, 600]
    assert written.loc[1, "acc_piqa"] == pytest.approx(100 * (0.51 + 0.002))  # percent, as in the paper
    assert (results / "tables/summary.md").read_text().startswith("| variant")
    for name in FIGURES:
        assert (results / "figures" / name).stat().st_size > 1000


def test_paper_comparison(results):
    aggregate(results / "variants.tsv", results / "paper.tsv", results / "eval", results / "train", results / "tables", results / "figures")
    table = pd.read_csv(results / "tables/paper_comparison.csv").set_index("variant")
    assert table.loc["rec", "paper_acc_avg"] == 51.7
    assert table.loc["rec", "paper_acc_avg_vs_original"] == pytest.approx(51.7 - 61.7)
    assert table.loc["rec", "acc_avg_vs_original"] == pytest.approx(1.0)  # +0.01 per variant, in percent
    assert pd.isna(table.loc["rel", "paper_acc_avg"])  # relaxed_r64 is not in this reference file


def test_missing_result_is_one_line(results, capsys):
    (results / "eval/rel.json").unlink()
    err = cli_error(capsys, ["aggregate", "--variants", str(results / "variants.tsv"), "--eval-dir",
                             str(results / "eval"), "--train-dir", str(results / "train"),
                             "--tables", str(results / "t"), "--figures", str(results / "f")])
    assert err == f"rrt aggregate: error: missing result: {results / 'eval/rel.json'}"


def test_stage_times_from_snakemake_benchmarks(tmp_path):
    from rrt.report.aggregate import stage_times

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, seconds, rss in (("uptrain/a.tsv", 60.0, 2000.5), ("uptrain/b.tsv", 40.0, 2500.0),
                              ("corpus.tsv", 8.5, "-")):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t{seconds}\n")
    table = stage_times(tmp_path).set_index("rule")
    assert table.loc["uptrain", "jobs"] == 2 and table.loc["uptrain", "seconds_total"] == 100.0
    assert table.loc["uptrain", "seconds_mean"] == 50.0 and table.loc["uptrain", "max_rss_mb"] == 2500.0
    assert table.loc["corpus", "seconds_total"] == 8.5 and pd.isna(table.loc["corpus", "max_rss_mb"])
    assert table.loc["all jobs", "jobs"] == 3 and table.loc["all jobs", "seconds_total"] == 108.5
