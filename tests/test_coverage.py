"""The paper coverage table: per paper table, its settings, the variants planned for them and
the variants with results; and the shipped reference file against the shipped variants."""
import json
from pathlib import Path

import pandas as pd
import pytest

from rrt.report.coverage import COLUMNS, OURS, TOTAL, UNKNOWN, coverage_table
from rrt.variants import read_variants

ROOT = Path(__file__).resolve().parents[1]

PAPER = ("paper_ref\tpaper_table\tpaper_acc_avg\tpaper_ppl_pg19\n"
         "orig\tfull-size models\t61.7\t\n"
         "up\tfull-size models\t\t\n"
         "r256\trank sweep; module ranks\t54.2\t\n"
         "attn\tmodule ranks\t\t13.5\n"
         "mlp\tmodule ranks\t\t\n")
VARIANTS = pd.DataFrame({"variant": ["o", "r", "r-again", "a", "extra", "typo"],
                         "paper_ref": ["orig", "r256", "r256", "attn", "-", "nope"]})


@pytest.fixture
def paper(tmp_path):
    (tmp_path / "paper.tsv").write_text(PAPER)
    return pd.read_csv(tmp_path / "paper.tsv", sep="\t")


def test_counts_per_paper_table(tmp_path, paper):
    (tmp_path / "eval").mkdir()
    for name in ("o", "r-again", "extra"):  # evaluated; the rest are planned only
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps({}))
    table = coverage_table(VARIANTS, paper, tmp_path / "eval")
    assert list(table.columns) == COLUMNS
    rows = {r.paper_table: r for r in table.itertuples(index=False)}
    assert list(rows) == ["full-size models", "rank sweep", "module ranks", OURS, f"{UNKNOWN}: nope", TOTAL]
    full = rows["full-size models"]
    assert (full.paper_settings, full.paper_numbers, full.settings_planned, full.rows_planned,
            full.rows_with_results, full.settings_without_row) == (2, 1, 1, 1, 1, "up")
    # r256 is in two tables: its two variants count in both.
    assert (rows["rank sweep"].rows_planned, rows["rank sweep"].rows_with_results) == (2, 1)
    modules = rows["module ranks"]
    assert (modules.paper_settings, modules.paper_numbers, modules.settings_planned, modules.rows_planned,
            modules.rows_with_results, modules.settings_without_row) == (3, 2, 2, 3, 1, "mlp")
    assert (rows[OURS].rows_planned, rows[OURS].rows_with_results) == (1, 1)
    assert (rows[f"{UNKNOWN}: nope"].rows_planned, rows[f"{UNKNOWN}: nope"].rows_with_results) == (1, 0)
    # The total counts each setting and each variant once.
    total = rows[TOTAL]
    assert (total.paper_settings, total.paper_numbers, total.settings_planned, total.rows_planned,
            total.rows_with_results, total.settings_without_row) == (5, 3, 3, 6, 3, "2 in all")


def test_without_a_reference_file_every_variant_is_ours(tmp_path):
    table = coverage_table(VARIANTS.assign(paper_ref="-"), pd.DataFrame({"paper_ref": []}), tmp_path)
    assert table.paper_table.tolist() == [OURS, TOTAL]
    assert table.rows_planned.tolist() == [6, 6] and table.rows_with_results.tolist() == [0, 0]


def test_aggregate_writes_the_coverage_table(tmp_path, paper):
    from rrt.report.aggregate import aggregate
    from rrt.settings import TASKS

    (tmp_path / "variants.tsv").write_text(
        "variant\tkind\tbase\tinit\tloops\tsharing\trank\tkd\ttokens\tpaper_ref\n"
        "o\toriginal\tb\t-\t1\t-\t0\tfalse\t0\torig\n")
    (tmp_path / "eval").mkdir()
    accs = {f"acc_{t}": 0.5 for t in TASKS} | {"acc_avg": 0.5}
    (tmp_path / "eval/o.json").write_text(json.dumps({"ppl_wiki": 9.0, "params": {"non_embedding": 10}, **accs}))
    aggregate(tmp_path / "variants.tsv", tmp_path / "paper.tsv", tmp_path / "eval", tmp_path / "train",
              tmp_path / "tables", tmp_path / "figures")
    written = pd.read_csv(tmp_path / "tables/paper_coverage.csv", keep_default_na=False).set_index("paper_table")
    assert written.loc["full-size models", "rows_with_results"] == 1
    assert written.loc["module ranks", "settings_without_row"] == "r256, attn, mlp"
    assert (tmp_path / "tables/paper_coverage.md").read_text().startswith("| paper_table")
    comparison = pd.read_csv(tmp_path / "tables/paper_comparison.csv")
    assert comparison.loc[0, "paper_table"] == "full-size models"  # the comparison names the paper's table too


# --- the shipped tables -------------------------------------------------------------------
REFERENCE = ROOT / "config/paper_reference.tsv"


def _reference() -> pd.DataFrame:
    return pd.read_csv(REFERENCE, sep="\t", dtype=str, keep_default_na=False)


def test_every_reference_row_names_its_paper_table_once():
    reference = _reference()
    assert not reference.paper_ref.duplicated().any()
    assert (reference.paper_table.str.strip() != "").all()
    # A setting without a number says why (or is the review's reading): nothing blank is silent.
    numbers = [c for c in reference.columns if c.startswith(("paper_acc", "paper_ppl"))]
    without = reference[(reference[numbers] == "").all(axis=1)]
    assert len(without) and without.paper_note.str.contains("not in our notes").all()


@pytest.mark.parametrize("variants", ["config/variants.tsv", "config/paper_variants.tsv", ".test/config/variants.tsv"])
def test_every_shipped_paper_ref_is_in_the_reference(variants):
    table = read_variants(ROOT / variants).reset_index(drop=True)
    coverage = coverage_table(table, pd.read_csv(REFERENCE, sep="\t"), ROOT / "no-results")
    assert not coverage.paper_table.str.startswith(UNKNOWN).any()
    assert coverage.set_index("paper_table").loc[TOTAL, "rows_planned"] == len(table)


def test_paper_variants_plan_every_paper_number():
    """Every setting the paper gives a number for has a row in config/paper_variants.tsv."""
    planned = set(read_variants(ROOT / "config/paper_variants.tsv").paper_ref)
    reference = _reference()
    numbers = [c for c in reference.columns if c.startswith(("paper_acc", "paper_ppl"))]
    with_number = reference[(reference[numbers] != "").any(axis=1)]
    assert sorted(set(with_number.paper_ref) - planned) == UNPLANNED_NUMBERS


# Settings with a number but no variant: none (every number of our notes is planned).
UNPLANNED_NUMBERS = []
