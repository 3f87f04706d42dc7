"""Early exit in the report: accuracy and perplexity at every exit of a recursive model, and
what confidence-threshold exiting trades (exit rate against accuracy), from the "exits" key of
the eval JSONs. Variants evaluated without exits are left out; with none, the tables are
header-only and the figures say so, because the workflow always expects these files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .figures import save_figure  # noqa: E402

EXIT_FIGURES = ["exit_rates.png", "exit_tradeoff.png"]
CRITERIA = ("max_prob", "entropy")
EXIT_HEAD = ["variant", "base", "parent", "early_exit", "exit", "loops", "depth"]
EXIT_TAIL = ["acc_avg", "acc_avg_se", "acc_avg_vs_final", "paper_ref", "paper_acc_avg", "paper_acc_avg_vs_final"]
THRESHOLD_COLUMNS = ["variant", "set", "criterion", "threshold", "exit_rate", "mean_loops", "ppl", "next_token_acc",
                     "agree", "acc_avg", "acc_avg_se"]
NO_DATA = "no early-exit variants in this run"


def read_exits(variants: pd.DataFrame, eval_dir: Path) -> dict[str, dict]:
    """{variant: its eval JSON's "exits"} for the variants evaluated at every exit, in table order."""
    found = {}
    for name in variants["variant"]:
        with open(Path(eval_dir) / f"{name}.json") as f:
            exits = json.load(f).get("exits")
        if exits:
            found[name] = exits
    return found


def _percent(fraction) -> float:
    return math.nan if fraction is None else 100 * fraction


def _paper_at_exits(paper: pd.DataFrame, ref: str, loops: int) -> list[float]:
    """The paper's mean accuracy at exits 1..loops: paper_acc_avg_exit<b> before the last,
    paper_acc_avg at the last; NaN where the reference has no row or no value."""
    rows = paper[paper["paper_ref"] == ref] if "paper_ref" in paper else paper.iloc[:0]
    columns = [f"paper_acc_avg_exit{b}" for b in range(1, loops)] + ["paper_acc_avg"]
    if rows.empty:
        return [math.nan] * loops
    return [float(rows.iloc[0][c]) if c in rows and pd.notna(rows.iloc[0][c]) else math.nan for c in columns]


def _task_accuracies(entry: dict) -> dict:
    """acc_<task> and acc_avg in percent, acc_avg_se, from one per-exit or per-threshold entry."""
    row = {k: 100 * v for k, v in entry.items() if k.startswith("acc_") and not k.endswith("_stderr")}
    row["acc_avg_se"] = _percent(entry.get("acc_avg_stderr"))
    return row


def _variant_exit_rows(variant, exits: dict, paper: pd.DataFrame) -> list[dict]:
    loops = exits["loops"]
    tasks = {t["exit"]: t for t in exits.get("tasks") or []}
    paper_acc = _paper_at_exits(paper, getattr(variant, "paper_ref", "-"), loops)
    rows = []
    for b in range(1, loops + 1):
        row = {"variant": variant.variant, "base": variant.base, "parent": getattr(variant, "parent", "-"),
               "early_exit": getattr(variant, "early_exit", "-"), "exit": b, "loops": loops,
               "depth": exits["depths"][b - 1]}
        for name, result in exits["ppl"].items():  # `_exit_columns` groups these by kind
            row[f"ppl_{name}"] = result["exits"][b - 1]["ppl"]
            row[f"next_token_acc_{name}"] = 100 * result["exits"][b - 1]["acc"]
            row[f"oracle_agree_{name}"] = 100 * result["oracle"]["agree"][b - 1]
        row.update(_task_accuracies(tasks[b]) if b in tasks else {})
        row["paper_ref"] = getattr(variant, "paper_ref", "-")
        row["paper_acc_avg"] = paper_acc[b - 1]
        row["paper_acc_avg_vs_final"] = paper_acc[b - 1] - paper_acc[-1]
        rows.append(row)
    final = rows[-1].get("acc_avg", math.nan)
    for row in rows:
        row["acc_avg_vs_final"] = row.get("acc_avg", math.nan) - final
    return rows


def _exit_columns(rows: list[dict]) -> list[str]:
    """EXIT_HEAD, then ppl_, next_token_acc_, oracle_agree_ and acc_<task> columns (the union
    over rows, each kind in evaluation order), then EXIT_TAIL."""
    seen = list(dict.fromkeys(k for r in rows for k in r if k not in EXIT_HEAD and k not in EXIT_TAIL))
    kinds = ("ppl_", "next_token_acc_", "oracle_agree_", "acc_")
    return EXIT_HEAD + [c for k in kinds for c in seen if c.startswith(k)] + EXIT_TAIL


def exit_table(variants: pd.DataFrame, exits: dict[str, dict], paper: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant evaluated at every exit, exit b = 1..B): the depth it reads after
    (0-based), per held-out set perplexity, next-token accuracy and oracle agreement with the
    final exit's argmax (percent), the 7 tasks read at that exit (percent; NaN when no tasks
    ran), the gap of acc_avg to the variant's final exit and the same for the paper
    (paper_acc_avg_exit<b> for b < B, paper_acc_avg for B)."""
    rows = [r for v in variants.itertuples() if v.variant in exits
            for r in _variant_exit_rows(v, exits[v.variant], paper)]
    return pd.DataFrame(rows, columns=_exit_columns(rows))


def _threshold_row(variant: str, where: str, criterion: str, entry: dict) -> dict:
    return {"variant": variant, "set": where, "criterion": criterion, "threshold": entry["threshold"],
            "exit_rate": 100 * entry["exit_rate"], "mean_loops": entry["mean_loops"], "ppl": entry["ppl"],
            "next_token_acc": 100 * entry["acc"], "agree": 100 * entry["agree"]}


def _oracle_row(variant: str, where: str, result: dict) -> dict:
    """The oracle leaves at the first exit agreeing with the final argmax, so its top-1
    prediction, and thus its next-token accuracy, is the final exit's."""
    oracle = result["oracle"]
    return {"variant": variant, "set": where, "criterion": "oracle", "threshold": math.nan,
            "exit_rate": 100 * (1 - oracle["exit_at"][-1]), "mean_loops": oracle["mean_loops"],
            "next_token_acc": 100 * result["exits"][-1]["acc"], "agree": 100.0}


def _task_threshold_row(variant: str, criterion: str, entry: dict) -> dict:
    return {"variant": variant, "set": "tasks", "criterion": criterion, "threshold": entry["threshold"],
            "exit_rate": _percent(entry.get("exit_rate")), "acc_avg": 100 * entry["acc_avg"],
            "acc_avg_se": _percent(entry.get("acc_avg_stderr"))}


def threshold_table(exits: dict[str, dict]) -> pd.DataFrame:
    """One row per (variant, held-out set, criterion, threshold): exit rate (percent of tokens
    leaving before the final exit), mean loops, perplexity, next-token accuracy and agreement
    with the final argmax (percent); then per set an "oracle" row; then the 7 tasks at each
    task threshold (set "tasks": acc_avg and its se in percent)."""
    rows = []
    for variant, result in exits.items():
        for where, per_set in result["ppl"].items():
            for criterion, entries in (per_set.get("thresholds") or {}).items():
                rows += [_threshold_row(variant, where, criterion, e) for e in entries]
            rows.append(_oracle_row(variant, where, per_set))
        for criterion, entries in (result.get("task_thresholds") or {}).items():
            rows += [_task_threshold_row(variant, criterion, e) for e in entries]
    return pd.DataFrame(rows, columns=THRESHOLD_COLUMNS)


def _no_data(path: Path, text: str = NO_DATA) -> None:
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12)
    ax.set_axis_off()
    save_figure(fig, path)


def _first_set(thresholds: pd.DataFrame) -> str | None:
    """The first held-out set in evaluation order, the one the figures plot (None: no sets)."""
    sets = thresholds.loc[thresholds["set"] != "tasks", "set"]
    return sets.iloc[0] if len(sets) else None


def _threshold_label(criterion: str) -> str:
    return "threshold t: " + ("max softmax probability ≥ t" if criterion == "max_prob" else "entropy (nats) ≤ t")


def _lines(ax, data: pd.DataFrame, x: str, y: str, colours: dict, **style) -> None:
    """One line per variant through its points as they are (no averaging of equal x)."""
    if not data.empty:
        sns.lineplot(data=data, x=x, y=y, hue="variant", palette=colours, marker="o", estimator=None, ax=ax, **style)


def _exit_rates_figure(thresholds: pd.DataFrame, where: str, colours: dict, path: Path) -> None:
    """Exit rate against threshold, a panel per criterion, the oracle's rate dashed."""
    data = thresholds[thresholds["set"] == where]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, criterion in zip(axes, CRITERIA):
        _lines(ax, data[data["criterion"] == criterion], "threshold", "exit_rate", colours)
        for oracle in data[data["criterion"] == "oracle"].itertuples():
            ax.axhline(oracle.exit_rate, color=colours[oracle.variant], linestyle="--", linewidth=1)
        ax.set(xlabel=_threshold_label(criterion), ylabel="tokens leaving early (%)", ylim=(-2, 102),
               title=f"exit rate on {where} with {criterion} (dashed: oracle)")
    save_figure(fig, path)


def _next_token_panel(ax, thresholds: pd.DataFrame, table: pd.DataFrame, where: str, colours: dict) -> None:
    """Next-token accuracy against exit rate over the thresholds; each variant's final exit at
    0% (every token runs every loop), its earlier exits at 100%, the oracle starred."""
    on_set = thresholds[thresholds["set"] == where]
    _lines(ax, on_set[on_set["criterion"].isin(CRITERIA)], "exit_rate", "next_token_acc", colours, style="criterion")
    at_exit = zip(table["variant"], table["exit"] == table["loops"], table[f"next_token_acc_{where}"])
    for variant, final, acc in at_exit:
        ax.scatter(0 if final else 100, acc, color=colours[variant], marker="o" if final else "s", s=50, zorder=3,
                   edgecolor="black")
    for oracle in on_set[on_set["criterion"] == "oracle"].itertuples():
        ax.scatter(oracle.exit_rate, oracle.next_token_acc, color=colours[oracle.variant], marker="*", s=160,
                   zorder=4, edgecolor="black")
    ax.set(xlabel="tokens leaving early (%)", ylabel=f"next-token accuracy on {where} (%)",
           title="held-out next-token accuracy\n(● final exit, ■ an earlier exit for all tokens, ★ oracle)")


def _task_panel(ax, criterion: str, thresholds: pd.DataFrame, table: pd.DataFrame, colours: dict) -> None:
    """The 7-task mean at each task threshold; dashed: the final exit's, dotted: exit 1's."""
    _lines(ax, thresholds[(thresholds["set"] == "tasks") & (thresholds["criterion"] == criterion)], "threshold",
           "acc_avg", colours)
    for r in table.dropna(subset=["acc_avg"]).itertuples():
        if r.exit in (1, r.loops):
            ax.axhline(r.acc_avg, color=colours[r.variant], linestyle="--" if r.exit == r.loops else ":", linewidth=1)
    ax.set(xlabel=_threshold_label(criterion), ylabel="accuracy, mean of 7 tasks (%)",
           title=f"tasks with {criterion} exiting\n(dashed: final exit, dotted: exit 1)")


def _tradeoff_figure(thresholds: pd.DataFrame, table: pd.DataFrame, where: str, colours: dict, path: Path) -> None:
    tasks = thresholds[thresholds["set"] == "tasks"]
    # a task panel even without task thresholds: it still shows the per-exit accuracies
    panels = [c for c in CRITERIA if (tasks["criterion"] == c).any()] or ["max_prob"]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(5.5 * (1 + len(panels)), 4.2), squeeze=False)
    _next_token_panel(axes[0, 0], thresholds, table, where, colours)
    for ax, criterion in zip(axes[0, 1:], panels):
        _task_panel(ax, criterion, thresholds, table, colours)
    save_figure(fig, path)


def exit_figures(table: pd.DataFrame, thresholds: pd.DataFrame, out: Path) -> None:
    """exit_rates.png and exit_tradeoff.png from `exit_table` and `threshold_table`, on the
    first held-out set; one colour per variant across panels."""
    sns.set_theme(style="whitegrid", context="notebook")
    out = Path(out)
    where = _first_set(thresholds)
    if table.empty or where is None:
        for name in EXIT_FIGURES:
            _no_data(out / name, NO_DATA if table.empty else "no held-out set was evaluated at every exit")
        return
    names = list(dict.fromkeys(table["variant"]))
    colours = dict(zip(names, sns.color_palette(n_colors=len(names))))
    _exit_rates_figure(thresholds, where, colours, out / "exit_rates.png")
    _tradeoff_figure(thresholds, table, where, colours, out / "exit_tradeoff.png")
