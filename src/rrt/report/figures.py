"""The report's figures (seaborn): accuracy vs size (paper Fig. 1), initialisation methods,
relaxation rank, training loss curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

FIGURES = ["accuracy_vs_params.png", "init_comparison.png", "relaxed_rank.png", "loss_curves.png"]


def make_figures(summary: pd.DataFrame, variants: pd.DataFrame, curves: pd.DataFrame, out: Path) -> None:
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
