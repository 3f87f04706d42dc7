"""Aggregate per-variant results into the summary table, the comparison with the paper,
and the figures of the report."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .io import atomic_write_text

TASKS = ["lambada", "hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
ACC_COLUMNS = [f"acc_{t}" for t in TASKS] + ["acc_avg"]


def _read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def read_variants(path: str | Path) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    table["loops"] = table["loops"].astype(int)
    return table


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


def make_figures(summary: pd.DataFrame, variants: pd.DataFrame, curves: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    data = variants.merge(summary, on="variant")
    data["non_embedding_M"] = data["non_embedding_params"] / 1e6
    data["rank_num"] = data["rank"].map(lambda r: float("nan") if r == "full" else int(r))

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)

    # 1. Accuracy vs non-embedding size (paper Fig. 1)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(data=data, x="non_embedding_M", y="acc_avg", hue="kind", style="kind", s=90, ax=ax)
    for r in data.itertuples():
        ax.annotate(r.variant, (r.non_embedding_M, r.acc_avg), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set(xlabel="non-embedding parameters (M)", ylabel="few-shot accuracy, mean of 7 tasks (%)")
    save(fig, "accuracy_vs_params.png")

    # 2. Initialisation methods (pure recursive, no KD)
    inits = data[(data.kind == "recursive") & (data.rank_num == 0) & (~data.kd.astype(str).str.lower().eq("true"))]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    sns.barplot(data=inits, x="init", y="acc_avg", ax=axes[0], color="C0")
    axes[0].set(ylabel="accuracy, mean of 7 (%)", title="few-shot accuracy")
    ppl_col = next((c for c in data.columns if c.startswith("ppl_")), None)
    if ppl_col:
        sns.barplot(data=inits, x="init", y=ppl_col, ax=axes[1], color="C1")
        axes[1].set(title=f"perplexity ({ppl_col[4:]})")
    save(fig, "init_comparison.png")

    # 3. Relaxation: accuracy vs LoRA rank for the Average-initialised variants
    relaxed = data[(data.kind == "recursive") & (data.init == "average")].sort_values("rank_num")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sns.lineplot(data=relaxed, x="rank_num", y="acc_avg", marker="o", ax=ax)
    ax.set(xlabel="LoRA rank per depth", ylabel="accuracy, mean of 7 (%)", title="relaxed recursive (Average + SVD)")
    save(fig, "relaxed_rank.png")

    # 4. Training loss curves
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if not curves.empty:
        x = "tokens_seen" if "tokens_seen" in curves else "step"
        sns.lineplot(data=curves, x=x, y="loss", hue="variant", ax=ax)
    ax.set(ylabel="training loss", title="uptraining")
    save(fig, "loss_curves.png")


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


FIGURES = ["accuracy_vs_params.png", "init_comparison.png", "relaxed_rank.png", "loss_curves.png"]


def aggregate(variants_tsv, paper_tsv, eval_dir, train_dir, tables_dir, figures_dir, bench_dir=None) -> pd.DataFrame:
    variants = read_variants(variants_tsv)
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


def _cmd_aggregate(args) -> None:
    from .cli import UsageError

    for flag, path in (("--variants", args.variants), ("--eval-dir", args.eval_dir)):
        if not Path(path).exists():
            raise UsageError(f"{flag} {path} does not exist")
    try:
        summary = aggregate(args.variants, args.paper, args.eval_dir, args.train_dir, args.tables, args.figures,
                            args.benchmarks)
    except FileNotFoundError as e:
        raise UsageError(f"missing result: {e.filename}") from None
    print(summary.to_markdown(index=False, floatfmt=".2f"))


def register(sub) -> None:
    p = sub.add_parser("aggregate", help="summary tables, paper comparison and figures from per-variant results")
    p.add_argument("--variants", required=True, help="variants TSV")
    p.add_argument("--paper", default=None, help="paper reference TSV")
    p.add_argument("--eval-dir", required=True)
    p.add_argument("--train-dir", required=True)
    p.add_argument("--tables", required=True, help="output directory for tables")
    p.add_argument("--figures", required=True, help="output directory for figures")
    p.add_argument("--benchmarks", default=None,
                   help="Snakemake benchmark directory: adds stage_times.csv/.md to --tables")
    p.set_defaults(func=_cmd_aggregate)
