"""The paper coverage table: for each of the paper's tables and figures (the reference
file's `paper_table` column), how many of its settings the experiment plans a variant for,
and how many of those variants have results (their evaluation JSON exists).

A reference row may belong to several tables ("rank sweep; module ranks"): it counts in
each. Variants without a `paper_ref` are our own rows and get a row of their own, as do
variants whose `paper_ref` the reference file lacks."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

OURS = "ours (no paper reference)"
UNKNOWN = "paper_ref not in the reference file"
TOTAL = "total"
COLUMNS = ["paper_table", "paper_settings", "paper_numbers", "settings_planned", "rows_planned", "rows_with_results",
           "settings_without_row"]


def _has_number(paper: pd.DataFrame) -> pd.Series:
    """Per reference row: whether the paper gives it any accuracy or perplexity."""
    numbers = [c for c in paper.columns if c.startswith(("paper_acc", "paper_ppl"))]
    if not numbers:
        return pd.Series(False, index=paper.index)
    return paper[numbers].apply(pd.to_numeric, errors="coerce").notna().any(axis=1)


def coverage_table(variants: pd.DataFrame, paper: pd.DataFrame, eval_dir: Path) -> pd.DataFrame:
    """One row per paper table (in the order the reference file first names them), then our
    own rows and a total. `paper_settings`: reference rows of the table; `paper_numbers`: those
    with a number; `settings_planned`: those with a variant; `rows_planned`: variants pointing
    into the table; `rows_with_results`: of those, the ones with results/eval/<variant>.json;
    `settings_without_row`: the reference rows no variant plans."""
    eval_dir = Path(eval_dir)
    if "paper_table" not in paper:
        paper = paper.assign(paper_table="")
    paper = paper.assign(has_number=_has_number(paper))
    done = {name for name in variants["variant"] if (eval_dir / f"{name}.json").exists()}
    planned = variants[variants["paper_ref"] != "-"]
    # (paper_ref, table) pairs: a reference row in two tables counts in both.
    tables = paper[["paper_ref", "paper_table", "has_number"]].copy()
    tables["paper_table"] = tables["paper_table"].fillna("").astype(str).str.split(";")
    tables = tables.explode("paper_table")
    tables["paper_table"] = tables["paper_table"].str.strip().replace("", "(no table named)")
    rows = []
    for table, refs in tables.groupby("paper_table", sort=False):
        mine = planned[planned["paper_ref"].isin(refs["paper_ref"])]
        without = [r for r in refs["paper_ref"] if r not in set(mine["paper_ref"])]
        rows.append({"paper_table": table, "paper_settings": len(refs), "paper_numbers": int(refs["has_number"].sum()),
                     "settings_planned": len(refs) - len(without), "rows_planned": len(mine),
                     "rows_with_results": int(mine["variant"].isin(done).sum()),
                     "settings_without_row": ", ".join(without)})
    unknown = variants[~variants["paper_ref"].isin(set(paper["paper_ref"]) | {"-"})]
    unknown_label = f"{UNKNOWN}: {', '.join(dict.fromkeys(unknown['paper_ref']))}"
    for label, rest in ((OURS, variants[variants["paper_ref"] == "-"]), (unknown_label, unknown)):
        if len(rest):
            rows.append({"paper_table": label, "paper_settings": 0, "paper_numbers": 0, "settings_planned": 0,
                         "rows_planned": len(rest), "rows_with_results": int(rest["variant"].isin(done).sum()),
                         "settings_without_row": ""})
    # The total counts each reference row and each variant once, however many tables name it.
    settings = paper.drop_duplicates("paper_ref")
    unplanned = settings[~settings["paper_ref"].isin(planned["paper_ref"])]
    rows.append({"paper_table": TOTAL, "paper_settings": len(settings),
                 "paper_numbers": int(settings["has_number"].sum()),
                 "settings_planned": len(settings) - len(unplanned), "rows_planned": len(variants),
                 "rows_with_results": int(variants["variant"].isin(done).sum()),
                 "settings_without_row": f"{len(unplanned)} in all" if len(unplanned) else ""})
    return pd.DataFrame(rows, columns=COLUMNS)
