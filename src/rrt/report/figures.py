"""The report's figures (seaborn): accuracy vs size (paper Fig. 1), initialisation methods,
relaxation rank, training loss curves, training throughput over the steps."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..variants import CONVERT_COLUMNS  # noqa: E402

FIGURES = ["accuracy_vs_params.png", "init_comparison.png", "relaxed_rank.png", "loss_curves.png",
           "train_throughput.png"]


def first_ppl_column(summary: pd.DataFrame) -> str | None:
    """The first held-out set in evaluation order (config `data.heldout`: wiki in the
    default, slimpajama in the paper config), which the init figure plots."""
    return next((c for c in summary.columns if c.startswith("ppl_")), None)


def save_figure(fig, path: Path) -> None:
    """Every report figure: laid out tight, 120 dpi, then closed."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def make_figures(summary: pd.DataFrame, variants: pd.DataFrame, curves: pd.DataFrame, out: Path,
                 speed: pd.DataFrame | None = None) -> None:
    """Every figure separates base models (and loop counts where they vary) rather than
    averaging across them. `speed`: the uptrainings' logged tokens/s, model FLOP/s and MFU per
    step (`aggregate.training_speed`)."""
    sns.set_theme(style="whitegrid", context="notebook")
    data = variants.drop(columns=["base"]).merge(summary, on="variant")
    data["non_embedding_M"] = data["non_embedding_params"] / 1e6
    data["rank_num"] = data["rank"].map(lambda r: float("nan") if r == "full" else int(r))
    data["model"] = data["base"] + " B=" + data["loops"].astype(str)
    several_bases = data["base"].nunique() > 1
    # Early-exit rows train more (or other) exits than their init's row: not init or rank points.
    plain = data["early_exit"].eq("-") & data["parent"].eq("-") if "early_exit" in data else True
    # Ablation rows (an ablation column set, middle sharing) are other settings of an init or
    # rank: the figures compare today's defaults, the tables list every row.
    ablated = data[[c for c in (*CONVERT_COLUMNS, "kd_loss") if c in data]].ne("-").any(axis=1)
    plain = plain & ~ablated & (data["sharing"].ne("middle") if "sharing" in data else True)

    def save(fig, name):
        save_figure(fig, out / name)

    # 1. Accuracy vs non-embedding size (paper Fig. 1), with each mean's standard error
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(data=data, x="non_embedding_M", y="acc_avg", hue="kind", style="base" if several_bases else "kind",
                    s=90, ax=ax, zorder=3)
    if "acc_avg_se" in data:
        ax.errorbar(data["non_embedding_M"], data["acc_avg"], yerr=data["acc_avg_se"], fmt="none", ecolor="grey",
                    elinewidth=1, capsize=2, zorder=2)
    for r in data.itertuples():
        ax.annotate(r.variant, (r.non_embedding_M, r.acc_avg), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set(xlabel="non-embedding parameters (M)", ylabel="few-shot accuracy, mean of 7 tasks (%)")
    save(fig, "accuracy_vs_params.png")

    # 2. Initialisation methods (pure recursive, no KD), per base model and loop count
    inits = data[(data.kind == "recursive") & (data.rank_num == 0) & (~data.kd) & plain]
    several_models = inits["model"].nunique() > 1
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    sns.barplot(data=inits, x="init", y="acc_avg", hue="model" if several_models else None, ax=axes[0], color="C0")
    axes[0].set(ylabel="accuracy, mean of 7 (%)", title="few-shot accuracy")
    ppl_col = first_ppl_column(summary)
    if ppl_col:
        sns.barplot(data=inits, x="init", y=ppl_col, hue="model" if several_models else None, ax=axes[1], color="C1")
        axes[1].set(ylabel=f"perplexity ({ppl_col[4:]})", title=f"held-out perplexity: {ppl_col[4:]}")
        if inits[ppl_col].max() / max(inits[ppl_col].min(), 1e-9) > 20:
            axes[1].set_yscale("log")
    save(fig, "init_comparison.png")

    # 3. Relaxation: accuracy vs LoRA rank for the Average-initialised variants, per base and KD
    relaxed = data[(data.kind == "recursive") & (data.init == "average") & plain].sort_values("rank_num").copy()
    relaxed["setting"] = relaxed["model"] + relaxed["kd"].map({True: " + KD", False: ""})
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sns.lineplot(data=relaxed, x="rank_num", y="acc_avg", hue="setting", marker="o", ax=ax)
    ax.set(xlabel="LoRA rank per depth", ylabel="accuracy, mean of 7 (%)", title="relaxed recursive (Average + SVD)")
    save(fig, "relaxed_rank.png")

    # 4. Training loss curves
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if not curves.empty:
        x = "tokens_seen" if "tokens_seen" in curves else "step"
        sns.lineplot(data=curves, x=x, y="loss", hue="variant", style="base" if several_bases else None, ax=ax)
    ax.set(ylabel="training loss", title="uptraining")
    save(fig, "loss_curves.png")

    # 5. Training throughput over the steps (the event files `tensorboard --logdir results/train` shows)
    throughput_over_steps(speed if speed is not None else pd.DataFrame(), out / "train_throughput.png")


def throughput_over_steps(speed: pd.DataFrame, path: Path) -> None:
    """Tokens/s of each uptraining at every logged step, beside its MFU where the GPU's peak
    was known, else its model FLOP/s; a note instead when no run wrote event files."""
    several = not speed.empty and speed["base"].nunique() > 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if speed.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no TensorBoard event files\n(train.report_to: none)", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
    else:
        style = "base" if several else None
        sns.lineplot(data=speed, x="step", y="tokens_per_s", hue="variant", style=style, ax=axes[0], legend=False)
        axes[0].set(ylabel="tokens/s (all ranks)", title="uptraining throughput")
        mfu = "mfu" in speed and speed["mfu"].notna().any()
        y = "mfu" if mfu else "model_flops_per_s"
        sns.lineplot(data=speed, x="step", y=y, hue="variant", style=style, ax=axes[1])
        axes[1].set(ylabel="MFU" if mfu else "model FLOP/s (no known peak: no MFU)",
                    title="model FLOPs utilisation" if mfu else "achieved model FLOP/s")
        axes[1].legend(fontsize=7)
    save_figure(fig, path)
