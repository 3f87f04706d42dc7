"""Aggregate per-variant results into the summary table, the comparison with the paper,
and the figures of the report."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..io import atomic_write_text
from ..settings import TASKS
from ..variants import read_variants
from .figures import make_figures

ACC_COLUMNS = [f"acc_{t}" for t in TASKS] + ["acc_avg"]


def _read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def summarize(variants: pd.DataFrame, eval_dir: Path, train_dir: Path) -> pd.DataFrame:
    """One row per variant: variant, non_embedding_params, tokens, ppl_<set>..., acc_<task>...,
    acc_avg. Accuracies in percent, as in the paper."""
    rows = []
    for v in variants.itertuples():
        result = _read_json(eval_dir / f"{v.variant}.json")
        summary_file = train_dir / v.variant / "train_summary.json"
        tokens = _read_json(summary_file)["tokens"] if summary_file.exists() and v.kind != "original" else 0
        row = {"variant": v.variant, "non_embedding_params": result["params"]["non_embedding"], "tokens": tokens}
        row.update({k: result[k] for k in sorted(result) if k.startswith("ppl_")})
        row.update({k: 100 * result[k] for k in ACC_COLUMNS if k in result})
        rows.append(row)
    return pd.DataFrame(rows)


def compare_with_paper(summary: pd.DataFrame, variants: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Our variants beside the paper's closest setting. Absolute numbers are not comparable
    (135M model, thousands of tokens vs Gemma 2B, billions), so both sides also get the
    difference to their own full-size original."""
    table = variants[["variant", "kind", "init", "loops", "rank", "kd"]].merge(summary, on="variant")
    if "paper_ref" in variants:
        table = table.merge(variants[["variant", "paper_ref"]], on="variant").merge(paper, on="paper_ref", how="left")
    full = table.loc[table.kind == "original", "acc_avg"]
    table["acc_avg_vs_original"] = table["acc_avg"] - (full.iloc[0] if len(full) else float("nan"))
    if "paper_acc_avg" in table:
        paper_original = paper.set_index("paper_ref")["paper_acc_avg"].get("full_original", float("nan"))
        table["paper_acc_avg_vs_original"] = table["paper_acc_avg"] - paper_original
    keep = ["variant", "kind", "init", "loops", "rank", "kd", "non_embedding_params", "tokens", "acc_avg",
            "acc_avg_vs_original", "paper_setting", "paper_non_embedding_B", "paper_tokens", "paper_acc_avg",
            "paper_acc_avg_vs_original"]
    return table[[c for c in keep if c in table]]


def _write(df: pd.DataFrame, stem: Path) -> None:
    """CSV and Markdown, each atomically."""
    for suffix, text in ((".csv", df.to_csv(index=False)), (".md", df.to_markdown(index=False, floatfmt=".2f"))):
        atomic_write_text(stem.with_suffix(suffix), text + ("\n" if not text.endswith("\n") else ""))


def loss_curves(variants: pd.DataFrame, train_dir: Path) -> pd.DataFrame:
    frames = []
    for v in variants.itertuples():
        path = train_dir / v.variant / "loss.csv"
        if v.kind != "original" and path.exists():
            frames.append(pd.read_csv(path).assign(variant=v.variant))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def stage_times(bench_dir: Path) -> pd.DataFrame:
    """Per rule, from Snakemake's `benchmark:` files (bench_dir/<rule>/<job>.tsv or
    bench_dir/<rule>.tsv): jobs, total / mean / max seconds and peak memory. Job-seconds add
    up; with parallel jobs the wall time of the run is less than the total."""
    rows = []
    for path in sorted(Path(bench_dir).rglob("*.tsv")):
        rule = path.parent.name if path.parent != Path(bench_dir) else path.stem
        bench = pd.read_csv(path, sep="\t")
        rows.append({"rule": rule, "job": path.stem, "seconds": float(bench["s"].iloc[-1]),
                     "max_rss_mb": pd.to_numeric(bench["max_rss"], errors="coerce").iloc[-1]})
    columns = ["rule", "jobs", "seconds_total", "seconds_mean", "seconds_max", "max_rss_mb"]
    if not rows:
        return pd.DataFrame(columns=columns)
    jobs = pd.DataFrame(rows)
    table = jobs.groupby("rule", sort=False).agg(
        jobs=("job", "size"), seconds_total=("seconds", "sum"), seconds_mean=("seconds", "mean"),
        seconds_max=("seconds", "max"), max_rss_mb=("max_rss_mb", "max")).reset_index()
    total = {"rule": "all jobs", "jobs": len(jobs), "seconds_total": jobs.seconds.sum(),
             "seconds_mean": jobs.seconds.mean(), "seconds_max": jobs.seconds.max(), "max_rss_mb": jobs.max_rss_mb.max()}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)[columns]


def aggregate(variants_tsv, paper_tsv, eval_dir, train_dir, tables_dir, figures_dir, bench_dir=None) -> pd.DataFrame:
    variants = read_variants(variants_tsv).reset_index(drop=True)
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(variants, Path(eval_dir), Path(train_dir))
    _write(summary, tables_dir / "summary")
    paper = pd.read_csv(paper_tsv, sep="\t") if paper_tsv else pd.DataFrame({"paper_ref": []})
    _write(compare_with_paper(summary, variants, paper), tables_dir / "paper_comparison")
    make_figures(summary, variants, loss_curves(variants, Path(train_dir)), figures_dir)
    if bench_dir is not None:
        _write(stage_times(Path(bench_dir)), tables_dir / "stage_times")
    return summary
