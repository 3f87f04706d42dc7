"""Per-variant results into the report's tables: the summary, the comparison with the
paper, the paper coverage, and stage times. Every comparison is within one base model: a
variant is compared with its own base's original, the paper's rows with the paper's original
of the same model."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..io import atomic_write_text
from ..settings import TASKS, TENSORBOARD_DIR
from ..variants import Experiment, read_variants
from .coverage import coverage_table
from .dlt import comparison_table as dlt_comparison_table
from .dlt import dlt_decisions, params_figure, read_reference, tying_figure
from .early_exit import exit_figures, exit_table, read_exits, threshold_table
from .figures import make_figures
from .simulated import simulated_table
from .throughput import FIGURE as THROUGHPUT_FIGURE
from .throughput import throughput_figure, throughput_table

ACC_COLUMNS = [f"acc_{t}" for t in TASKS] + ["acc_avg"]
# Our choices where the paper is silent; stated beside every trained row of the comparison.
PAPER_SILENT = ("AdamW betas", "weight decay", "KD mix weight", "KD temperature", "KD teacher")


def _read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def summarize(variants: pd.DataFrame, eval_dir: Path, train_dir: Path,
              trained: set[str] | None = None) -> pd.DataFrame:
    """One row per variant: variant, base, non_embedding_params, tokens, ppl_<set>... (in the
    order the sets were evaluated), acc_<task> and acc_avg in percent as in the paper, each
    with its standard error acc_<task>_se (lm-eval's; NaN when not reported). `tokens` are
    those the uptraining saw, from the train summary of each variant in `trained` (the
    experiment's variants that train; None: of every variant with one that is not an original)."""
    rows = []
    for v in variants.itertuples():
        result = _read_json(eval_dir / f"{v.variant}.json")
        summary_file = train_dir / v.variant / "train_summary.json"
        trains = v.variant in trained if trained is not None else summary_file.exists() and v.kind != "original"
        tokens = _read_json(summary_file)["tokens"] if trains else 0
        row = {"variant": v.variant, "base": v.base, "non_embedding_params": result["params"]["non_embedding"],
               "tokens": tokens}
        row.update({k: result[k] for k in result if k.startswith("ppl_") and not isinstance(result[k], dict)})
        for column in ACC_COLUMNS:
            if column in result:
                row[column] = 100 * result[column]
                stderr = result.get(f"{column}_stderr")
                row[f"{column}_se"] = math.nan if stderr is None else 100 * stderr
        rows.append(row)
    return pd.DataFrame(rows)


def _original_of(table: pd.DataFrame, column: str, key: str, original_mask: pd.Series) -> pd.Series:
    """For every row, `column` of the original row with the same `key` (NaN if none)."""
    originals = table[original_mask].drop_duplicates(key).set_index(key)[column]
    return table[key].map(originals)


def _assumptions(row, train_settings: dict | None) -> str:
    if train_settings is None or row.kind == "original":
        return ""
    betas = ", ".join(str(b) for b in train_settings.get("adam_betas", []))
    parts = [f"AdamW betas ({betas})", f"weight decay {train_settings.get('weight_decay')}"]
    if row.kd:
        kd = train_settings.get("kd", {})
        parts.append(f"KD {kd.get('loss')}: loss = {1 - kd.get('weight', 0):g} CE + {kd.get('weight'):g} KD, "
                     f"T={kd.get('temperature'):g}, teacher = the original {row.base}")
    return "; ".join(parts)


def compare_with_paper(summary: pd.DataFrame, variants: pd.DataFrame, paper: pd.DataFrame,
                       train_settings: dict | None = None) -> pd.DataFrame:
    """Our variants beside the paper's closest setting. Absolute numbers are not comparable
    (a 135M model and thousands of tokens against 1-2B and billions), so both sides also get
    the difference to their own full-size original: ours to the original of the same base,
    the paper's to the original of the same paper model."""
    columns = ["variant", "kind", "init", "loops", "rank", "kd", "paper_ref", "note"]
    table = variants[columns].merge(summary, on="variant")
    table["acc_avg_vs_original"] = table["acc_avg"] - _original_of(table, "acc_avg", "base",
                                                                   table.kind == "original")
    if len(paper):
        table = table.merge(paper, on="paper_ref", how="left")
        if "paper_model" in paper:
            originals = paper[paper.paper_setting.str.lower().eq("original")].set_index("paper_model")
            table["paper_acc_avg_vs_original"] = table["paper_acc_avg"] - table["paper_model"].map(
                originals["paper_acc_avg"])
    table["our_assumptions"] = [_assumptions(r, train_settings) for r in table.itertuples()]
    keep = ["variant", "base", "kind", "init", "loops", "rank", "kd", "non_embedding_params", "tokens", "acc_avg",
            "acc_avg_se", "acc_avg_vs_original", "paper_table", "paper_model", "paper_setting",
            "paper_non_embedding_B", "paper_tokens", "paper_acc_avg", "paper_acc_avg_vs_original", "paper_note",
            "note", "our_assumptions"]
    return table[[c for c in keep if c in table]]


def _mean_text(mean: float, se: float) -> str:
    """"mean ± se", "mean" without a se, "" without a mean (a row that has no accuracy)."""
    if pd.isna(mean):
        return ""
    return f"{mean:.1f}" if pd.isna(se) else f"{mean:.1f} ± {se:.1f}"


def _with_stderr(df: pd.DataFrame) -> pd.DataFrame:
    """acc columns as "mean ± se" text for the Markdown table (the CSV keeps both numbers)."""
    out = df.copy()
    for column in ACC_COLUMNS:
        se = f"{column}_se"
        if column in out and se in out:
            out[column] = [_mean_text(m, s) for m, s in zip(out[column], out[se])]
            out = out.drop(columns=se)
    return out


def _write(df: pd.DataFrame, stem: Path) -> None:
    """CSV and Markdown, each atomically."""
    markdown = _with_stderr(df).to_markdown(index=False, floatfmt=".2f")
    for suffix, text in ((".csv", df.to_csv(index=False)), (".md", markdown)):
        atomic_write_text(stem.with_suffix(suffix), text + ("\n" if not text.endswith("\n") else ""))


def loss_curves(variants: pd.DataFrame, train_dir: Path) -> pd.DataFrame:
    frames = []
    for v in variants.itertuples():
        path = train_dir / v.variant / "loss.csv"
        if v.kind != "original" and path.exists():
            frames.append(pd.read_csv(path).assign(variant=v.variant, base=v.base))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


SPEED_TAGS = {"train/tokens_per_s": "tokens_per_s", "train/model_flops_per_s": "model_flops_per_s",
              "train/mfu": "mfu"}


def training_speed(variants: pd.DataFrame, train_dir: Path) -> pd.DataFrame:
    """Per trained variant and logged step, the tokens/s, model FLOP/s and MFU (where logged)
    its uptraining wrote to TensorBoard (train_dir/<variant>/tensorboard, `train.report_to:
    tensorboard`), read as TensorBoard reads them: a resumed run's steps once. Empty when no
    variant has event files (or tensorboard is not installed)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return pd.DataFrame()
    frames = []
    for v in variants.itertuples():
        logs = train_dir / v.variant / TENSORBOARD_DIR
        if v.kind == "original" or not any(logs.glob("events.out.tfevents.*")):
            continue
        events = EventAccumulator(str(logs), size_guidance={"scalars": 0})  # 0: keep every step
        events.Reload()
        columns = {name: pd.Series({e.step: e.value for e in events.Scalars(tag)}, dtype=float)
                   for tag, name in SPEED_TAGS.items() if tag in events.Tags()["scalars"]}
        if "tokens_per_s" in columns:
            frames.append(pd.DataFrame(columns).rename_axis("step").reset_index().assign(variant=v.variant, base=v.base))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def stage_times(bench_dir: Path) -> pd.DataFrame:
    """Per rule, from Snakemake's `benchmark:` files (bench_dir/<rule>.tsv, <rule>/<job>.tsv
    or <rule>/<base>/<job>.tsv): jobs, total / mean / max seconds and peak memory. Job-seconds add
    up; with parallel jobs the wall time of the run is less than the total."""
    rows = []
    for path in sorted(Path(bench_dir).rglob("*.tsv")):
        parts = path.relative_to(bench_dir).parts
        rule = parts[0] if len(parts) > 1 else path.stem
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


def write_early_exit(variants: pd.DataFrame, eval_dir: Path, paper: pd.DataFrame, tables_dir: Path,
                     figures_dir: Path) -> None:
    """early_exit and exit_thresholds tables with their two figures, for every run: header-only
    tables and "no early-exit variants" figures when no variant was evaluated at every exit."""
    exits = read_exits(variants, eval_dir)
    per_exit, thresholds = exit_table(variants, exits, paper), threshold_table(exits)
    _write(per_exit, tables_dir / "early_exit")
    _write(thresholds, tables_dir / "exit_thresholds")
    exit_figures(per_exit, thresholds, figures_dir)


def write_throughput(variants: pd.DataFrame, throughput_dir: Path, eval_dir: Path, tables_dir: Path,
                     figures_dir: Path) -> None:
    """The throughput table and its figure against accuracy (header-only / "none" without
    variants asking for throughput)."""
    table = throughput_table(variants, throughput_dir, eval_dir)
    _write(table, tables_dir / "throughput")
    throughput_figure(table, figures_dir / THROUGHPUT_FIGURE)


def write_dlt(summary: pd.DataFrame, variants: pd.DataFrame, eval_dir: Path, train_dir: Path,
              trained: set[str] | None, tables_dir: Path, figures_dir: Path, reference_tsv=None) -> None:
    """Dynamic Layer Tying: the dlt_comparison table (learned vs fixed tying at equal size;
    from scratch, untied vs learned), the DLT paper's numbers (dlt_reference, from
    `reference_tsv`), the tying-map and trainable-parameter figures; header-only tables and
    "no DLT runs" figures without DLT variants (or without a reference file)."""
    decisions = dlt_decisions(variants, train_dir, trained)
    _write(dlt_comparison_table(summary, variants, eval_dir, decisions), tables_dir / "dlt_comparison")
    reference = read_reference(reference_tsv) if reference_tsv else pd.DataFrame({"dlt_ref": []})
    _write(reference, tables_dir / "dlt_reference")
    tying_figure(decisions, figures_dir / "dlt_tying.png")
    params_figure(decisions, figures_dir / "dlt_params.png")


def aggregate(variants_tsv, paper_tsv, eval_dir, train_dir, tables_dir, figures_dir, bench_dir=None,
              train_settings: dict | None = None, throughput_dir=None, config: dict | None = None,
              simulate_dir=None, paper_throughput_tsv=None, dlt_reference_tsv=None) -> pd.DataFrame:
    """Every table and figure of the report. `config`: the workflow's resolved config, which
    the variants are checked against and which says which of them train."""
    variants = read_variants(variants_tsv)
    trained = None if config is None else {v.name for v in Experiment(config, variants, variants_tsv) if v.trains}
    variants = variants.reset_index(drop=True)
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(variants, Path(eval_dir), Path(train_dir), trained)
    _write(summary, tables_dir / "summary")
    paper = pd.read_csv(paper_tsv, sep="\t") if paper_tsv else pd.DataFrame({"paper_ref": []})
    _write(compare_with_paper(summary, variants, paper, train_settings), tables_dir / "paper_comparison")
    make_figures(summary, variants, loss_curves(variants, Path(train_dir)), figures_dir,
                 training_speed(variants, Path(train_dir)))
    write_dlt(summary, variants, Path(eval_dir), Path(train_dir), trained, tables_dir, figures_dir, dlt_reference_tsv)
    write_early_exit(variants, Path(eval_dir), paper, tables_dir, figures_dir)
    _write(coverage_table(variants, paper, Path(eval_dir)), tables_dir / "paper_coverage")
    if throughput_dir is not None:
        write_throughput(variants, Path(throughput_dir), Path(eval_dir), tables_dir, figures_dir)
    if simulate_dir is not None:
        theirs = pd.read_csv(paper_throughput_tsv, sep="\t") if paper_throughput_tsv else None
        _write(simulated_table(variants, Path(simulate_dir), throughput_dir, Path(eval_dir), theirs),
               tables_dir / "throughput_simulated")
    if bench_dir is not None:
        _write(stage_times(Path(bench_dir)), tables_dir / "stage_times")
    return summary
