"""The datasets of lm-eval's stock tasks (`eval.source: harness`), fetched ahead into a cache.

Compute nodes often have no internet. lm-eval's stock tasks load their data with
`datasets.load_dataset(dataset_path, dataset_name, **dataset_kwargs)` (lm-eval's
`ConfigurableTask.download`); `fetch` makes that same call, with `cache_dir`, on a machine
that reaches the hub, so the prepared Arrow files land in `<cache>/<namespace>___<name>/
<config>/<version>/<commit>/`, the layout `datasets` falls back to when the hub is out of
reach. An evaluation whose `datasets` cache is that folder (`tasks.harness_cache`) then
reads them with HF_DATASETS_OFFLINE=1. What each task needs is read from lm-eval's own task
configs (`TaskManager().task_index`, includes resolved), not written down here.
"""
from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import datasets
from datasets.naming import camelcase_to_snakecase
from lm_eval.tasks import TaskManager

from ..errors import first_line
from ..io import atomic_write_json
from .tasks import HARNESS_TASKS

SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
MANIFEST = "rrt-eval-data.json"  # what the last fetches put in the cache, per task


class FetchError(RuntimeError):
    """A task's dataset could not be fetched (or, offline, is not in the cache)."""


def harness_datasets(tasks: list[str], manager: TaskManager | None = None) -> list[dict]:
    """[{"task", "lm_eval_task", "path", "name", "kwargs", "splits"}] of `tasks` (names of
    rrt.settings.TASKS), as lm-eval's configs of their stock tasks state them: the dataset
    id, its config name (None: the dataset's default), the extra `load_dataset` arguments and
    the splits the task reads."""
    manager = manager or TaskManager()
    out = []
    for task in tasks:
        name = HARNESS_TASKS[task]
        entry = manager.task_index.get(name)
        if entry is None or entry.cfg is None:
            raise FetchError(f"task {task}: lm-eval {version('lm_eval')} has no task config {name!r}")
        cfg = entry.cfg
        if "custom_dataset" in cfg or not cfg.get("dataset_path"):
            raise FetchError(f"task {task}: lm-eval's {name} does not load a hub dataset (no dataset_path)")
        kwargs = dict(cfg.get("dataset_kwargs") or {})
        kwargs.pop("trust_remote_code", None)  # lm-eval drops it too on datasets >= 4
        out.append({"task": task, "lm_eval_task": name, "path": cfg["dataset_path"], "name": cfg.get("dataset_name"),
                    "kwargs": kwargs, "splits": [cfg[k] for k in SPLIT_KEYS if cfg.get(k)]})
    return out


def cache_folder(cache, spec: dict) -> Path:
    """Where `datasets` keeps the prepared dataset under `cache`: `<namespace>___<name>`
    (the name in snake case, as `datasets` writes and looks it up) and, when the task names
    one, the config's folder. The version and commit folders below it are known only once
    fetched."""
    *namespace, dataset = spec["path"].split("/")
    folder = Path(cache) / "___".join([*namespace, camelcase_to_snakecase(dataset)])
    return folder / spec["name"] if spec["name"] else folder


def plan_lines(specs: list[dict], cache) -> list[str]:
    """The plan: one line per task (dataset, config, splits, folder)."""
    lines = []
    for s in specs:
        extra = "".join(f" {k}={v!r}" for k, v in s["kwargs"].items())
        lines.append(f"{s['task']}: lm-eval {s['lm_eval_task']} <- {s['path']} config {s['name'] or '(default)'}"
                     f"{extra} splits {','.join(s['splits'])} -> {cache_folder(cache, s)}")
    return lines


def _offline() -> bool:
    return bool(datasets.config.HF_HUB_OFFLINE)


def fetch(specs: list[dict], cache, log=print) -> dict:
    """Load every dataset of `specs` into `cache` as lm-eval will load it, stopping at the
    first failure with a FetchError naming the task and dataset. With HF_DATASETS_OFFLINE set
    this checks the cache instead (nothing is downloaded). Returns the manifest it writes
    (atomically) to `<cache>/rrt-eval-data.json`, merged with an earlier one: per task the
    dataset, config, rows per split and the folder (relative to `cache`)."""
    cache = Path(cache).resolve()
    manifest_path = cache / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.setdefault("tasks", {})
    for s in specs:
        try:
            data = datasets.load_dataset(s["path"], s["name"], cache_dir=str(cache), **s["kwargs"])
        except Exception as e:  # any failure of one dataset ends the run, in one line
            hint = (" (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set: run it where the hub is reachable, without them)"
                    if _offline() else "")
            raise FetchError(f"task {s['task']} (lm-eval {s['lm_eval_task']}): dataset {s['path']} config "
                             f"{s['name'] or '(default)'} is not in {cache}{hint}: {type(e).__name__}: "
                             f"{first_line(e)}") from e
        missing = [split for split in s["splits"] if split not in data]
        if missing:
            raise FetchError(f"task {s['task']}: dataset {s['path']} has no split {missing[0]!r} "
                             f"(it has {', '.join(data)})")
        folder = Path(next(iter(data.values())).cache_files[0]["filename"]).parent
        rows = {split: data[split].num_rows for split in data}
        manifest["tasks"][s["task"]] = {"lm_eval_task": s["lm_eval_task"], "path": s["path"], "name": s["name"],
                                        "splits": rows, "folder": str(folder.relative_to(cache))}
        log(f"{s['task']}: {s['path']} {s['name'] or '(default)'} "
            f"{', '.join(f'{k} {v:,}' for k, v in rows.items())} rows in {folder}")
    manifest.update(lm_eval=version("lm_eval"), datasets=version("datasets"))
    atomic_write_json(manifest_path, manifest)
    return manifest
