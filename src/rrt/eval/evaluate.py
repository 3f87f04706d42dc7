"""Evaluating one model: held-out perplexity and the 7 few-shot tasks, written as one JSON."""
from __future__ import annotations

import math
import time

import torch
from transformers import AutoTokenizer

from ..errors import UsageError, first_line
from ..io import atomic_write_json
from ..model.load import load_model_dir
from ..model.params import count_params
from .perplexity import exit_perplexity, perplexity
from .tasks import DEFAULT_PROMPT_FORMAT, headline, headline_stderr, run_tasks


def _load(model_dir, need_tokenizer: bool):
    """The model in fp32 on CPU (bf16 matmuls are far slower there), bf16 on a GPU."""
    model = load_model_dir(model_dir, "--model").eval()
    if torch.cuda.is_available():
        model = model.to("cuda", dtype=torch.bfloat16)
    tokenizer = None
    if need_tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except Exception as e:
            raise UsageError(f"model directory {model_dir} has no usable tokenizer: {first_line(e)}") from e
    return model, tokenizer


def mean_stderr(stderrs: list[float | None]) -> float | None:
    """Standard error of the mean of independent task accuracies: sqrt(sum se^2) / n."""
    if not stderrs or any(s is None or math.isnan(s) for s in stderrs):
        return None
    return math.sqrt(sum(s * s for s in stderrs)) / len(stderrs)


def evaluate_model(model_dir, out_json, ppl_sets: dict[str, str] | None = None, tasks: list[str] | None = None,
                   source: str = "embedded", limit: int | None = None, batch_size: int = 8, workdir=None,
                   prompt_formats: dict[str, str] | None = None,
                   default_format: str = DEFAULT_PROMPT_FORMAT, exits: bool = False) -> dict:
    """Evaluate one saved model and write its JSON (atomically: complete or absent):
    {"model", "params": {"non_embedding", "lora", "embedding", "total"}, "ppl_<set>",
     "acc_<task>", "acc_<task>_stderr", "acc_avg", "acc_avg_stderr", "tasks": {task: {...}},
     "ppl": {set: {...}}, "limit", "source", "seconds": {"load", "ppl_<set>", "task_<task>", "total"}}.
    With `exits`, also "ppl_exits": {set: `exit_perplexity`} (perplexity at every loop's
    exit and the oracle exit rates)."""
    ppl_sets, tasks = dict(ppl_sets or {}), list(tasks or [])
    start = time.perf_counter()
    model, tokenizer = _load(model_dir, need_tokenizer=bool(tasks))
    seconds = {"load": time.perf_counter() - start}
    result = {"model": str(model_dir), "source": source, "limit": limit, "device": str(next(model.parameters()).device),
              "torch_threads": torch.get_num_threads(), "params": count_params(model), "ppl": {}}
    for name, path in ppl_sets.items():
        t = time.perf_counter()
        result["ppl"][name] = perplexity(model, path, batch_size)
        result[f"ppl_{name}"] = result["ppl"][name]["ppl"]
        seconds[f"ppl_{name}"] = time.perf_counter() - t
        if exits:
            t = time.perf_counter()
            result.setdefault("ppl_exits", {})[name] = exit_perplexity(model, path, batch_size)
            seconds[f"ppl_exits_{name}"] = time.perf_counter() - t
    if tasks:
        per_task = run_tasks(model, tokenizer, tasks, source, limit, batch_size, workdir, prompt_formats,
                             default_format)
        result["tasks"] = per_task
        for task in tasks:
            result[f"acc_{task}"] = headline(task, per_task[task])
            result[f"acc_{task}_stderr"] = headline_stderr(task, per_task[task])
            seconds[f"task_{task}"] = per_task[task]["seconds"]
        result["acc_avg"] = sum(result[f"acc_{t}"] for t in tasks) / len(tasks)
        result["acc_avg_stderr"] = mean_stderr([result[f"acc_{t}_stderr"] for t in tasks])
    seconds["total"] = time.perf_counter() - start
    result["seconds"] = seconds
    atomic_write_json(out_json, result)
    return result
