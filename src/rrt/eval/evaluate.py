"""Evaluating one model: held-out perplexity and the 7 few-shot tasks, written as one JSON."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..data.tokenizer import prefix_token
from ..errors import UsageError, first_line
from ..io import atomic_write_json, check_finite
from ..model.exits import exit_depths, read_at_exit, read_when_confident
from ..model.load import load_model_dir
from ..model.params import count_params
from ..model.precision import autocast, use_bf16
from .perplexity import perplexities, perplexity
from .tasks import DEFAULT_PROMPT_FORMAT, ExitStates, headline, headline_stderr, run_tasks


def _load(model_dir, need_tokenizer: bool, precision: str):
    """The model and whether it runs under bf16 autocast: on a GPU in bf16 unless `precision`
    is fp32; on a CPU in fp32 weights, autocast to bf16 with `precision` bf16 where the CPU
    has native bf16 (`rrt.model.precision`). Its tokenizer: required with `need_tokenizer`,
    else loaded when the directory has one (its prefix token conditions perplexity)."""
    model = load_model_dir(model_dir, "--model").eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = use_bf16(precision, device)
    if device == "cuda":
        model = model.to("cuda", dtype=torch.bfloat16 if bf16 else torch.float32)
    tokenizer = None
    if need_tokenizer or (Path(model_dir) / "tokenizer_config.json").is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except Exception as e:
            raise UsageError(f"model directory {model_dir} has no usable tokenizer: {first_line(e)}") from e
    return model, tokenizer, bf16


def mean_stderr(stderrs: list[float | None]) -> float | None:
    """Standard error of the mean of independent task accuracies: sqrt(sum se^2) / n."""
    if not stderrs or any(s is None or math.isnan(s) for s in stderrs):
        return None
    return math.sqrt(sum(s * s for s in stderrs)) / len(stderrs)


def _accuracies(per_task: dict) -> dict:
    """acc_<task>, acc_<task>_stderr, acc_avg, acc_avg_stderr of one `run_tasks` result."""
    out = {}
    for task, metrics in per_task.items():
        out[f"acc_{task}"] = headline(task, metrics)
        out[f"acc_{task}_stderr"] = headline_stderr(task, metrics)
    out["acc_avg"] = sum(out[f"acc_{t}"] for t in per_task) / len(per_task)
    out["acc_avg_stderr"] = mean_stderr([out[f"acc_{t}_stderr"] for t in per_task])
    return out


def exit_tasks(model, run, final: dict, thresholds: dict[str, list[float]] | None = None) -> dict:
    """The tasks read at every exit and with confidence-threshold exiting: `run(readout)`
    runs them on `model` read out with an `exit_readout` choice; `final` holds the last
    exit's accuracies (the model's own, not rerun). {"tasks": [{"exit": b, acc_*...} for
    b = 1..B], "task_thresholds": {criterion: [{"threshold", acc_*...}]}}."""
    loops = len(exit_depths(model))
    per_exit = []
    for b in range(loops - 1):
        per_exit.append({"exit": b + 1, **_accuracies(run(read_at_exit(b)))})
    per_exit.append({"exit": loops, **{k: v for k, v in final.items() if k.startswith("acc_")}})
    at_threshold = {}
    for criterion, ts in (thresholds or {}).items():
        at_threshold[criterion] = []
        for t in ts:
            at_threshold[criterion].append({"threshold": float(t),
                                            **_accuracies(run(read_when_confident(model, criterion, t)))})
    return {"tasks": per_exit, "task_thresholds": at_threshold}


def evaluate_model(model_dir, out_json, ppl_sets: dict[str, str] | None = None, tasks: list[str] | None = None,
                   source: str = "embedded", limit: int | None = None, batch_size: int = 8, workdir=None,
                   prompt_formats: dict[str, str] | None = None,
                   default_format: str = DEFAULT_PROMPT_FORMAT, exits: bool = False,
                   exit_thresholds: dict[str, list[float]] | None = None,
                   exit_task_thresholds: dict[str, list[float]] | None = None, precision: str = "auto",
                   data_cache=None) -> dict:
    """Evaluate one saved model and write its JSON (atomically: complete or absent):
    {"model", "params": {"non_embedding", "lora", "embedding", "total"}, "ppl_<set>",
     "acc_<task>", "acc_<task>_stderr", "acc_avg", "acc_avg_stderr", "tasks": {task: {...}},
     "ppl": {set: {...}}, "prefix_token" (the tokenizer's <bos> each held-out block is conditioned on, or
     None: `rrt.eval.perplexity`), "limit", "source", "seconds": {"load", "ppl_<set>", "task_<task>", "total"}}.
    With `exits`, also "exits": {"loops", "depths", "ppl": {set: `exit_perplexity` with
    `exit_thresholds`}, "tasks": [accuracies read at each exit], "task_thresholds":
    {criterion: [accuracies with each token read at its confident exit, per threshold of
    `exit_task_thresholds`]}} (`exit_tasks`). A NaN or infinite metric is a NonFiniteError
    naming it (e.g. `ppl_wikitext`), raised as soon as it is measured; nothing is written.
    `precision` (auto | bf16 | fp32, `rrt.model.precision`) is recorded as "precision": the one
    the run used (bf16 or fp32). `data_cache`: the `datasets` cache of the harness tasks' data
    (`rrt.eval.tasks.harness_cache`; None: `datasets`' own)."""
    ppl_sets, tasks = dict(ppl_sets or {}), list(tasks or [])
    failed = f"evaluation of {model_dir} (nothing written to {out_json})"  # a NaN or infinite metric
    start = time.perf_counter()
    model, tokenizer, bf16 = _load(model_dir, need_tokenizer=bool(tasks), precision=precision)
    with autocast(bf16 and not torch.cuda.is_available()):  # a GPU model is in bf16 itself
        prefix = prefix_token(tokenizer) if tokenizer is not None else None
        seconds = {"load": time.perf_counter() - start}
        result = {"model": str(model_dir), "source": source, "limit": limit, "device": str(next(model.parameters()).device),
                  "torch_threads": torch.get_num_threads(), "params": count_params(model), "prefix_token": prefix,
                  "precision": "bf16" if bf16 else "fp32", "ppl": {}}
        if exits:
            result["exits"] = {"loops": len(exit_depths(model)), "depths": exit_depths(model), "ppl": {}}
        for name, path in ppl_sets.items():
            t = time.perf_counter()
            if exits:  # one pass gives both (`perplexities`)
                result["ppl"][name], result["exits"]["ppl"][name] = perplexities(model, path, batch_size, exit_thresholds,
                                                                                 prefix)
            else:
                result["ppl"][name] = perplexity(model, path, batch_size, prefix)
            result[f"ppl_{name}"] = result["ppl"][name]["ppl"]
            seconds[f"ppl_{name}"] = time.perf_counter() - t
            check_finite({f"ppl_{name}": result[f"ppl_{name}"], "ppl": result["ppl"], "exits": result.get("exits")},
                         failed)  # at once: the tasks would take long and change nothing
        if tasks:
            # With exits the tasks run 1 + (loops - 1) + thresholds times: the depths run once,
            # every rerun only reads the kept hidden states out (`ExitStates`; same logits).
            states = ExitStates(model) if exits else None
            per_task = run_tasks(model, tokenizer, tasks, source, limit, batch_size, workdir, prompt_formats,
                                 default_format, states, data_cache=data_cache)
            result["tasks"] = per_task
            result.update(_accuracies(per_task))
            for task in tasks:
                seconds[f"task_{task}"] = per_task[task]["seconds"]
            if exits:
                t = time.perf_counter()
                run = lambda readout: run_tasks(model, tokenizer, tasks, source, limit, batch_size,  # noqa: E731
                                                workdir, prompt_formats, default_format, states, readout,
                                                data_cache)
                result["exits"].update(exit_tasks(model, run, result, exit_task_thresholds))
                seconds["task_exits"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - start
        result["seconds"] = seconds
        check_finite(result, failed)
        atomic_write_json(out_json, result)
        return result
