"""Throughput against accuracy (the paper's Fig. of the same name, measured rather than
simulated): each `rrt throughput` result beside the accuracy of what it generated. The
speed-up of every setting is over its own job's full-size original through `generate`,
so rates from different jobs are never divided by each other. With no variant asking for
throughput, the table is header-only and the figure says so (the workflow always expects
these files)."""
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

FIGURE = "throughput_accuracy.png"
COLUMNS = ["variant", "base", "setting", "engine", "criterion", "threshold", "exit_kv", "tokens_per_s", "speedup",
           "mean_loops", "agreement_with_no_exit", "heldout_ppl", "memory_mb", "batch", "acc_avg", "acc_avg_se", "device",
           "dtype"]
NO_DATA = "no variant asks for throughput in this run"


def _percent(value) -> float:
    return math.nan if value is None else 100 * value


def _accuracy(setting: dict, own: dict, original: dict | None) -> tuple[float, float]:
    """(acc_avg, se) in percent of what a setting generates: the original's for hf_original,
    the variant's at the setting's exit threshold (eval.exit_task_thresholds) for an exit
    setting, else the variant's own (the engine without exit gives the model's tokens)."""
    source = original if setting["setting"] == "hf_original" else own
    if source is None:
        return math.nan, math.nan
    if setting.get("criterion") is None:
        return _percent(source.get("acc_avg")), _percent(source.get("acc_avg_stderr"))
    entries = ((source.get("exits") or {}).get("task_thresholds") or {}).get(setting["criterion"], [])
    entry = next((e for e in entries if math.isclose(e["threshold"], setting["threshold"])), {})
    return _percent(entry.get("acc_avg")), _percent(entry.get("acc_avg_stderr"))


def _read(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def throughput_table(variants: pd.DataFrame, throughput_dir: Path, eval_dir: Path) -> pd.DataFrame:
    """One row per (variant asking for throughput, setting): rates and speed-up as measured,
    the accuracy (mean of the 7 tasks, percent) of what the setting generates."""
    rows = []
    originals = variants[variants["kind"] == "original"].drop_duplicates("base").set_index("base")["variant"]
    for v in variants.itertuples():
        if not getattr(v, "throughput", False):
            continue
        result = _read(Path(throughput_dir) / f"{v.variant}.json")
        own = _read(Path(eval_dir) / f"{v.variant}.json")
        original = _read(Path(eval_dir) / f"{originals[v.base]}.json") if v.base in originals else None
        for s in result["settings"]:
            acc, se = _accuracy(s, own, original)
            rows.append({"variant": v.variant, "base": v.base, **{k: s.get(k) for k in COLUMNS[2:14]},
                         "agreement_with_no_exit": _percent(s.get("agreement_with_no_exit")),
                         "acc_avg": acc, "acc_avg_se": se, "device": result["machine"]["device"],
                         "dtype": result["machine"]["dtype"].replace("torch.", "")})
    return pd.DataFrame(rows, columns=COLUMNS)


def throughput_figure(table: pd.DataFrame, path: Path) -> None:
    """Speed-up over the full-size original's `generate` against accuracy: one colour per
    variant; ● the engine without exit, ■ the model through `generate`, a line through its
    exit thresholds (labelled), ★ the original (1× by definition)."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    data = table.dropna(subset=["acc_avg"])
    if data.empty:
        ax.text(0.5, 0.5, NO_DATA if table.empty else "no accuracy for the measured settings", ha="center",
                va="center", fontsize=12)
        ax.set_axis_off()
        save_figure(fig, path)
        return
    names = list(dict.fromkeys(data["variant"]))
    colours = dict(zip(names, sns.color_palette(n_colors=len(names))))
    for name, rows in data.groupby("variant", sort=False):
        c = colours[name]
        for r in rows.itertuples():
            marker = {"hf_original": "*", "hf": "s", "depthwise": "o"}.get(r.setting)
            if marker:
                original = r.setting == "hf_original"  # every job's own denominator: one grey star
                ax.scatter(r.acc_avg, r.speedup, color="lightgrey" if original else c, marker=marker,
                           s=160 if original else 60, edgecolor="black", zorder=3,
                           label=name if r.setting == "depthwise" else None)
        exits = rows[rows["criterion"].notna()]
        if not exits.empty:
            start = rows[rows["setting"] == "depthwise"]
            line = pd.concat([start, exits])
            ax.plot(line["acc_avg"], line["speedup"], color=c, marker="^", linewidth=1.2, zorder=2)
            for r in exits.itertuples():
                ax.annotate(f"{r.threshold:g}", (r.acc_avg, r.speedup), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    device = ", ".join(sorted(set(data["device"] + " " + data["dtype"])))
    ax.set(xlabel="few-shot accuracy, mean of 7 tasks (%)", ylabel="tokens/s over the original's generate (×)",
           title=f"throughput vs accuracy ({device})\n● engine, no exit  ■ generate  ▲ exit thresholds  ★ original")
    ax.legend(fontsize=8, loc="best")
    save_figure(fig, path)
