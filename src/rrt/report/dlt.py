"""The report's Dynamic Layer Tying part (docs/dlt.md): the tying map over training and the
trainable parameters over steps (figures, from each DLT run's `dlt_decisions.csv`), and the
table "learned vs fixed tying at equal size".

`dlt_decisions.csv` (written by `rrt train` beside loss.csv, one row per decision of the
agent): step, layer_map (space-separated ints: depth i uses unique layer layer_map[i]; an
untied depth uses itself), unique_layers, trainable_params, reward, epsilon."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..errors import UsageError  # noqa: E402
from ..variants import CONVERT_COLUMNS  # noqa: E402
from .figures import save_figure  # noqa: E402

DECISIONS = "dlt_decisions.csv"
DECISION_COLUMNS = ("step", "layer_map", "unique_layers", "trainable_params", "reward", "epsilon")
FIGURES = ["dlt_tying.png", "dlt_params.png"]
LEARNED_VS_FIXED = "learned vs fixed tying at equal size"
FROM_SCRATCH = "from scratch: untied vs learned tying"
COLUMNS = ["comparison", "variant", "kind", "base", "init", "tokens", "unique_layers", "params",
           "non_embedding_params", "dlt_max_unique", "decisions", "final_trainable_params"]
# Cells of the tying map past which the figure drops the per-cell numbers (unreadable).
ANNOTATE_MAX_CELLS = 400


def read_decisions(path: Path) -> pd.DataFrame:
    """One DLT run's decisions, checked: the contract's columns, one map per row of the same
    depth, every depth using itself or an earlier one. `layer_map` becomes a list of ints."""
    table = pd.read_csv(path)
    missing = [c for c in DECISION_COLUMNS if c not in table.columns]
    if missing:
        raise UsageError(f"{path}: missing column {missing[0]!r} (expected {', '.join(DECISION_COLUMNS)})")
    if table.empty:
        raise UsageError(f"{path}: no decisions")
    maps = []
    for step, text in zip(table.step, table.layer_map):
        try:
            layer_map = [int(x) for x in str(text).split()]
        except ValueError:
            raise UsageError(f"{path}: step {step}: layer_map {text!r} is not space-separated integers") from None
        if any(not 0 <= j <= i for i, j in enumerate(layer_map)):
            raise UsageError(f"{path}: step {step}: layer_map {text!r} ties a depth to a later one")
        maps.append(layer_map)
    if len({len(m) for m in maps}) != 1:
        raise UsageError(f"{path}: the layer maps have different depths")
    table["layer_map"] = maps
    return table


def dlt_decisions(variants: pd.DataFrame, train_dir: Path, trained: set[str] | None = None) -> dict[str, pd.DataFrame]:
    """{variant: its decisions} for every DLT variant that trained (`trained`: the names that
    train; None: every DLT variant). A DLT run without its decisions file is an error."""
    out = {}
    for v in variants.itertuples():
        if v.kind != "dlt" or (trained is not None and v.variant not in trained):
            continue
        path = Path(train_dir) / v.variant / DECISIONS
        if not path.is_file():
            raise UsageError(f"{path} does not exist: the DLT run of {v.variant!r} writes its decisions there")
        out[v.variant] = read_decisions(path)
    return out


def unique_layers_of(config: dict) -> int:
    """Unique decoder layers of a saved model's config.json: those its `layer_map` names (a
    recursive or DLT model), else every layer."""
    if config.get("layer_map"):
        return len(set(config["layer_map"]))
    text = config.get("text_config") or config
    return int(text["num_hidden_layers"])


def _model_config(eval_json: dict) -> dict | None:
    path = Path(eval_json.get("model", "")) / "config.json"
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def _plain(row: pd.Series) -> bool:
    """A row of today's defaults: no KD, LoRA, exits, parent or ablation column."""
    return (not row["kd"] and str(row["rank"]) == "0" and row["early_exit"] == "-" and row["parent"] == "-"
            and all(row.get(c, "-") == "-" for c in (*CONVERT_COLUMNS, "kd_loss")))


def comparison_table(summary: pd.DataFrame, variants: pd.DataFrame, eval_dir: Path,
                     decisions: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The DLT comparison, per DLT variant that trained:
    - from the base's weights (`init` -): LEARNED_VS_FIXED: the DLT row, the plain recursive
      rows of the same base, tokens and number of unique layers (the fixed CYCLE/SEQUENCE of
      the same size: its budget K, or its final unique layers without one), and the base's
      plain `full` rows of the same tokens (every layer untied);
    - from random weights (`init` scratch): FROM_SCRATCH: the DLT row and the untied `reduced`
      rows with loops 1 and random weights of the same base and tokens.
    Unique layers come from each evaluated model's config.json (blank when it is gone), params
    from its evaluation; a DLT row also has its decisions and the trainable parameters of its
    last one. Then summary's perplexities and accuracy."""
    ppl = [c for c in summary.columns if c.startswith("ppl_")]
    columns = COLUMNS + ppl + ["acc_avg", "acc_avg_se"]
    if not decisions:
        return pd.DataFrame(columns=columns)
    data = variants.drop(columns=["base", "tokens"]).merge(summary, on="variant")  # tokens: those trained
    data = data[data.apply(_plain, axis=1)]
    facts = {}  # variant: (unique parameters, unique layers), read once, for the rows compared only

    def unique_layers(name: str) -> float:
        if name not in facts:
            with open(Path(eval_dir) / f"{name}.json") as f:
                result = json.load(f)
            config = _model_config(result)
            facts[name] = (result["params"]["total"], unique_layers_of(config) if config is not None else math.nan)
        return facts[name][1]

    rows = []
    for dlt in data[data.variant.isin(decisions)].itertuples():
        last = decisions[dlt.variant].iloc[-1]
        same = (data.base == dlt.base) & (data.tokens == dlt.tokens)
        if dlt.init == "scratch":
            group = FROM_SCRATCH
            others = data[same & (data.kind == "reduced") & (data.init == "scratch") & (data.loops == 1)]
        else:
            group = LEARNED_VS_FIXED
            size = int(dlt.dlt_max_unique) if dlt.dlt_max_unique != "-" else int(last.unique_layers)
            recursive = data[same & (data.kind == "recursive")]
            fixed = recursive[[unique_layers(n) == size for n in recursive.variant]]
            others = pd.concat([fixed, data[same & (data.kind == "full")]])
        for r in [dlt, *others.itertuples()]:
            is_dlt = r.variant == dlt.variant
            unique_layers(r.variant)
            rows.append({"comparison": group, "variant": r.variant, "kind": r.kind, "base": dlt.base, "init": r.init,
                         "tokens": r.tokens, "unique_layers": facts[r.variant][1], "params": facts[r.variant][0],
                         "non_embedding_params": r.non_embedding_params,
                         "dlt_max_unique": r.dlt_max_unique if is_dlt else "",
                         "decisions": len(decisions[r.variant]) if is_dlt else "",  # blank: not a DLT row
                         "final_trainable_params": int(last.trainable_params) if is_dlt else "",
                         **{c: getattr(r, c) for c in summary.columns
                            if c.startswith("ppl_") or c in ("acc_avg", "acc_avg_se")}})
    return pd.DataFrame(rows, columns=columns)


def tying_grid(decisions: pd.DataFrame) -> np.ndarray:
    """The tying map over training as a depth × decision array of unique-layer indices."""
    return np.array(decisions["layer_map"].tolist()).T


def tying_figure(decisions: dict[str, pd.DataFrame], path: Path) -> None:
    """Per DLT run, the tying map over training: depth (rows) × decision step (columns), each
    cell the unique layer the depth uses after that decision (its own index: untied)."""
    sns.set_theme(style="white", context="notebook")
    if not decisions:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no DLT runs", ha="center", va="center")
        ax.set_axis_off()
        save_figure(fig, path)
        return
    fig, axes = plt.subplots(1, len(decisions), figsize=(max(5.0, 4.5 * len(decisions)), 4.5), squeeze=False)
    for ax, (name, table) in zip(axes[0], decisions.items()):
        grid = tying_grid(table)
        depths, steps = grid.shape
        annotate = depths * steps <= ANNOTATE_MAX_CELLS
        sns.heatmap(grid, ax=ax, cmap="viridis", vmin=0, vmax=depths - 1, annot=annotate, fmt="d",
                    annot_kws={"fontsize": 6}, xticklabels=table["step"].tolist(), cbar_kws={"label": "unique layer"})
        untied = grid == np.arange(depths)[:, None]
        for depth, step in zip(*np.nonzero(untied)):  # frame the untied cells (a depth using itself)
            ax.add_patch(plt.Rectangle((step, depth), 1, 1, fill=False, edgecolor="white", linewidth=0.8))
        ax.set(xlabel="optimizer step of the decision", ylabel="depth", title=f"{name}: tying map")
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
        if steps > 30:  # thin the step labels
            for i, label in enumerate(ax.get_xticklabels()):
                label.set_visible(i % math.ceil(steps / 30) == 0)
    save_figure(fig, path)


def params_figure(decisions: dict[str, pd.DataFrame], path: Path) -> None:
    """Trainable parameters and unique layers after each decision, per DLT run."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if decisions:
        frame = pd.concat([t.assign(variant=name, trainable_M=t.trainable_params / 1e6)
                           for name, t in decisions.items()], ignore_index=True)
        sns.lineplot(data=frame, x="step", y="trainable_M", hue="variant", marker="o", drawstyle="steps-post",
                     ax=axes[0])
        sns.lineplot(data=frame, x="step", y="unique_layers", hue="variant", marker="o", drawstyle="steps-post",
                     ax=axes[1], legend=False)
    else:
        for ax in axes:
            ax.text(0.5, 0.5, "no DLT runs", ha="center", va="center", transform=ax.transAxes)
    axes[0].set(xlabel="optimizer step", ylabel="trainable parameters (M)", title="trainable parameters")
    axes[1].set(xlabel="optimizer step", ylabel="unique layers", title="unique layers")
    save_figure(fig, path)


def read_reference(path: Path) -> pd.DataFrame:
    """The DLT paper's numbers (config/dlt_reference.tsv), as given: a blank cell is a number
    our reading of the paper does not give, and its `paper_note` says why."""
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    for column in ("dlt_ref", "paper_model", "paper_setting", "paper_note"):
        if column not in table.columns:
            raise UsageError(f"{path}: missing column {column!r}")
    return table
