"""The paper's throughput table, three ways side by side: simulated by the paper's procedure
(`rrt simulate`: decoding steps timed, batching simulated with the evaluation's exits),
measured by our engine (`rrt throughput`), and the paper's own numbers.

One row per (variant asking for throughput, exit setting). The simulated speed-ups are over
the full-size original's simulated vanilla and continuous sequence-wise batching in the same
job; the measured ×vanilla is over the original's `generate` in static batches in the
throughput job, and the measured ×sequence-wise exists only for the original itself (its
engine run is continuous sequence-wise batching; other jobs do not run the original in the
engine). Rates from different jobs are never divided by each other."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

COLUMNS = ["variant", "base", "non_embedding_params", "loops", "lora_rank", "batch", "exit", "mean_loops", "acc_avg",
           "sim_tokens_per_s", "sim_x_vanilla", "sim_x_sequence_wise", "measured_tokens_per_s", "measured_x_vanilla",
           "measured_x_sequence_wise", "paper_model", "paper_setting", "paper_max_batch", "paper_ms_per_token",
           "paper_x_vanilla", "paper_x_sequence_wise", "device", "dtype"]
PAPER = ["paper_model", "paper_setting", "paper_max_batch", "paper_ms_per_token", "paper_x_vanilla",
         "paper_x_sequence_wise"]


def _read(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _measured(result: dict | None, exit_name: str) -> dict | None:
    """The `rrt throughput` setting serving the same exits: the engine without exit for
    "none", exit_<criterion>_<t> for a threshold; None for the oracle (not servable: it
    needs the final loop's answer to decide)."""
    if result is None or exit_name == "oracle":
        return None
    name = "depthwise" if exit_name == "none" else "exit_{}_{:g}".format(*_split(exit_name))
    return next((s for s in result["settings"] if s["setting"] == name), None)


def _split(exit_name: str) -> tuple[str, float]:
    criterion, _, t = exit_name.partition(":")
    return criterion, float(t)


def _nan(value) -> float:
    return math.nan if value is None else value


def simulated_table(variants: pd.DataFrame, simulate_dir: Path, throughput_dir: Path | None, eval_dir: Path,
                    paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table of the module docstring (accuracy: mean of the 7 tasks, percent, of what the
    exit setting serves; NaN where the tasks were not rerun at that threshold)."""
    rows = []
    paper = paper.set_index("paper_ref") if paper is not None and len(paper) else None
    for v in variants.itertuples():
        if not getattr(v, "throughput", False):
            continue
        sim = _read(Path(simulate_dir) / f"{v.variant}.json")
        measured_file = Path(throughput_dir) / f"{v.variant}.json" if throughput_dir is not None else None
        measured = _read(measured_file) if measured_file is not None and measured_file.exists() else None
        params = _read(Path(eval_dir) / f"{v.variant}.json")["params"]["non_embedding"]
        ref = getattr(v, "paper_ref", "-")
        theirs = paper.loc[ref] if paper is not None and ref in paper.index else None
        for s in sim["settings"]:
            m = _measured(measured, s["exit"])
            # the original's own job: its engine run is its continuous sequence-wise batching
            own = measured is not None and measured.get("original") == measured.get("model")
            sequence_wise = _measured(measured, "none") if own else None
            rows.append({
                "variant": v.variant, "base": v.base, "non_embedding_params": params, "loops": sim["model"]["loops"],
                "lora_rank": int(getattr(v, "rank", 0) or 0), "batch": sim["model"]["max_batch"], "exit": s["exit"],
                "mean_loops": s["mean_loops"], "acc_avg": math.nan if s["acc_avg"] is None else 100 * s["acc_avg"],
                "sim_tokens_per_s": s["depth_wise_tokens_per_s"], "sim_x_vanilla": s["x_vanilla"],
                "sim_x_sequence_wise": s["x_sequence_wise"],
                "measured_tokens_per_s": _nan(m and m["tokens_per_s"]), "measured_x_vanilla": _nan(m and m["speedup"]),
                "measured_x_sequence_wise": m["tokens_per_s"] / sequence_wise["tokens_per_s"]
                if m is not None and sequence_wise is not None else math.nan,
                **{c: theirs[c] if theirs is not None and c in theirs.index else math.nan for c in PAPER},
                "device": sim["device"], "dtype": sim["dtype"]})
    return pd.DataFrame(rows, columns=COLUMNS)
