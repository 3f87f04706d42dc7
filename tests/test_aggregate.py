"""Aggregation of per-variant results into tables and figures."""
import json
import re

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
PAPER = ("paper_ref\tpaper_model\tpaper_setting\tpaper_non_embedding_B\tpaper_tokens\tpaper_acc_avg\n"
         "full_original\tGemma 2B\toriginal\t1.98\t0\t61.7\nrec_stepwise_b2\tGemma 2B\trec\t0.99\t15B\t51.7\n"
         "pythia_rec\tPythia 1B\trec\t\t15B\t43.5\n")


@pytest.fixture
def results(tmp_path):
    (tmp_path / "variants.tsv").write_text(VARIANTS)
    (tmp_path / "paper.tsv").write_text(PAPER)
    for d in ("eval", "train"):
        (tmp_path / d).mkdir()
    for i, (name, params) in enumerate((("orig", 1000), ("rec", 500), ("rel", 600))):
        accs = {f"acc_{t}": 0.5 + 0.01 * i + 0.001 * j for j, t in enumerate(TASKS)}
        accs["acc_avg"] = sum(accs.values()) / len(TASKS)
        accs |= {f"{k}_stderr": 0.1 for k in list(accs)}
        # ppl sets in evaluation order (wiki first), not alphabetical
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
    assert list(summary.columns) == ["variant", "base", "non_embedding_params", "tokens", "ppl_wiki", "ppl_fiction",
                                     *[c for a in ACC_COLUMNS for c in (a, f"{a}_se")]]
    written = pd.read_csv(results / "tables/summary.csv")
    assert written["variant"].tolist() == ["orig", "rec", "rel"]
    assert written["tokens"].tolist() == [0, 4096, 4096]
    assert written["non_embedding_params"].tolist() == [1000, 500, 600]
    assert written.loc[1, "acc_piqa"] == pytest.approx(100 * (0.51 + 0.002))  # percent, as in the paper
    assert written.loc[1, "acc_piqa_se"] == pytest.approx(10.0)
    markdown = (results / "tables/summary.md").read_text()
    assert markdown.startswith("| variant") and "51.2 ± 10.0" in markdown
    for name in FIGURES:
        assert (results / "figures" / name).stat().st_size > 1000


def test_training_throughput_from_the_event_files(results):
    """The report reads each uptraining's TensorBoard scalars back as TensorBoard shows them:
    `rec` was killed after logging step 3 and resumed from step 2 (its writer purges from
    step 3), so step 3 appears once, with the resumed session's value; `rel` wrote none."""
    from torch.utils.tensorboard import SummaryWriter

    from rrt.report.aggregate import training_speed
    from rrt.report.figures import throughput_over_steps
    from rrt.settings import TENSORBOARD_DIR
    from rrt.variants import read_variants

    logs = results / "train" / "rec" / TENSORBOARD_DIR
    first = SummaryWriter(str(logs), purge_step=1)
    for step, tokens_per_s in ((1, 100.0), (2, 110.0), (3, 999.0)):
        first.add_scalar("train/tokens_per_s", tokens_per_s, step)
        first.add_scalar("train/model_flops_per_s", 2e6 * tokens_per_s, step)
    first.close()
    resumed = SummaryWriter(str(logs), purge_step=3)
    for step, tokens_per_s in ((3, 120.0), (4, 130.0)):
        resumed.add_scalar("train/tokens_per_s", tokens_per_s, step)
        resumed.add_scalar("train/model_flops_per_s", 2e6 * tokens_per_s, step)
    resumed.close()

    speed = training_speed(read_variants(results / "variants.tsv").reset_index(drop=True), results / "train")
    assert speed["variant"].unique().tolist() == ["rec"] and "mfu" not in speed
    assert speed["step"].tolist() == [1, 2, 3, 4]
    assert speed["tokens_per_s"].tolist() == [100.0, 110.0, 120.0, 130.0]
    assert speed["model_flops_per_s"].tolist() == pytest.approx([2e8, 2.2e8, 2.4e8, 2.6e8], rel=1e-6)
    throughput_over_steps(speed, results / "speed.png")
    throughput_over_steps(pd.DataFrame(), results / "none.png")  # no event files: a note, not an error
    assert (results / "speed.png").stat().st_size > (results / "none.png").stat().st_size > 1000


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
                              ("corpus.tsv", 8.5, "-"), ("tokenize_shard/smollm2/0-of-2.tsv", 3.0, 900.0),
                              ("tokenize_shard/smollm2/1-of-2.tsv", 4.0, 950.0)):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t{seconds}\n")
    table = stage_times(tmp_path).set_index("rule")
    assert table.loc["uptrain", "jobs"] == 2 and table.loc["uptrain", "seconds_total"] == 100.0
    assert table.loc["uptrain", "seconds_mean"] == 50.0 and table.loc["uptrain", "max_rss_mb"] == 2500.0
    assert table.loc["corpus", "seconds_total"] == 8.5 and pd.isna(table.loc["corpus", "max_rss_mb"])
    # a rule whose jobs sit one folder deeper (per base model) is still one rule
    assert table.loc["tokenize_shard", "jobs"] == 2 and table.loc["tokenize_shard", "seconds_total"] == 7.0
    assert "smollm2" not in table.index
    assert table.loc["all jobs", "jobs"] == 5 and table.loc["all jobs", "seconds_total"] == 115.5


def test_several_bases_compare_with_their_own_original(results):
    """Two base models: each row's gap is to its own base's original, the paper's to the
    original of the same paper model; nothing is averaged across bases."""
    extra = ("orig2\toriginal\tc\t-\t1\t-\t0\tfalse\t0\t-\n"
             "rec2\trecursive\tc\tstepwise\t2\tcycle\t0\ttrue\tdefault\tpythia_rec\n")
    (results / "variants.tsv").write_text(VARIANTS + extra)
    for name, acc in (("orig2", 0.30), ("rec2", 0.20)):
        accs = {f"acc_{t}": acc for t in TASKS} | {"acc_avg": acc}
        (results / "eval" / f"{name}.json").write_text(json.dumps({"ppl_wiki": 5.0, "ppl_fiction": 6.0,
                                                                   "params": {"non_embedding": 7}, **accs}))
    settings = {"adam_betas": [0.9, 0.95], "weight_decay": 0.1, "kd": {"loss": "fkl", "weight": 0.5, "temperature": 1.0}}
    aggregate(results / "variants.tsv", results / "paper.tsv", results / "eval", results / "train",
              results / "tables", results / "figures", train_settings=settings)
    table = pd.read_csv(results / "tables/paper_comparison.csv").set_index("variant")
    assert table.loc["rec2", "acc_avg_vs_original"] == pytest.approx(-10.0)  # 20% vs its own 30%
    assert table.loc["rec", "acc_avg_vs_original"] == pytest.approx(1.0)  # still vs base b's original
    assert pd.isna(table.loc["rec2", "paper_acc_avg_vs_original"])  # no Pythia original in the reference
    assert table.loc["rec", "our_assumptions"] == "AdamW betas (0.9, 0.95); weight decay 0.1"
    assert table.loc["rec2", "our_assumptions"].endswith(
        "KD fkl: loss = 0.5 CE + 0.5 KD, T=1, teacher = the original c")
    assert pd.isna(table.loc["orig", "our_assumptions"])


def test_init_figure_plots_the_first_heldout_set(results):
    from rrt.report.figures import first_ppl_column

    summary = aggregate(results / "variants.tsv", results / "paper.tsv", results / "eval", results / "train",
                        results / "tables", results / "figures")
    assert first_ppl_column(summary) == "ppl_wiki"  # the caption's set, in evaluation order


def test_aggregate_rule_declares_the_benchmarks_it_reads(tmp_path):
    """The stage-times table reads every job's benchmark record: the aggregate rule declares
    them as inputs, so Snakemake's rule graph has an edge from every stage to aggregate
    (corpus, base_model, tokenize and convert produce nothing else aggregate reads)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    out = subprocess.run([snakemake, "--rulegraph", "-s", str(root / "Snakefile"), "-d", str(tmp_path),
                          "--configfile", str(root / ".test/config/config.yaml"), "--config",
                          f"variants={root}/.test/config/variants.tsv",
                          f"paper_reference={root}/config/paper_reference.tsv",
                          f"paper_throughput={root}/config/paper_throughput.tsv"],
                         cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    labels = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', out.stdout, re.M))
    edges = {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", out.stdout, re.M)}
    for stage in ("base_model", "corpus", "tokenize", "convert", "reduce", "uptrain", "evaluate"):
        assert (stage, "aggregate") in edges, (stage, sorted(edges))


def test_with_the_resolved_config_a_variant_that_trains_needs_its_train_summary(results, capsys):
    """`rrt aggregate --resolved-config` (as the workflow runs it): which variants trained
    comes from the variant model, so a missing train summary is an error, not 0 tokens."""
    config = {"variants": str(results / "variants.tsv"), "base_models": {"b": {"source": "tiny"}},
              "train": {"tokens": 4096}, "early_exit": {"recipes": {}}}
    (results / "config.json").write_text(json.dumps(config))
    argv = ["aggregate", "--variants", str(results / "variants.tsv"), "--eval-dir", str(results / "eval"),
            "--train-dir", str(results / "train"), "--tables", str(results / "t"), "--figures", str(results / "f"),
            "--resolved-config", str(results / "config.json")]
    summary = aggregate(results / "variants.tsv", None, results / "eval", results / "train", results / "tables",
                        results / "figures", config=config)
    assert summary["tokens"].tolist() == [0, 4096, 4096]
    (results / "train/rel/train_summary.json").unlink()
    assert cli_error(capsys, argv) == f"rrt aggregate: error: missing result: {results / 'train/rel/train_summary.json'}"
    config["base_models"] = {"c": {"source": "tiny"}}
    (results / "config.json").write_text(json.dumps(config))
    assert cli_error(capsys, argv).endswith("variants.tsv: variant 'orig' uses base 'b', not in base_models (c)")
