"""Checkpoints and the run's identity: which checkpoint a rerun resumes from, and the
settings that must not change across a resume.

A checkpoint (out/checkpoints/checkpoint-<step>, written by Trainer) is complete only once
it holds a manifest, `rrt_manifest.json`, written last and durably (temp file, fsync,
rename, fsync of the directory) by `ManifestCallback.on_save` after every rank finished
writing:

    {"format": 1, "step": 8, "run": {<RUN_KEYS: the run's settings>},
     "files": {"model.safetensors": {"size": 538090408, "sha256": "…"}, "optimizer.pt": …, …}}

`files` lists every file of the checkpoint (relative POSIX paths, sub-directories included:
DeepSpeed's global_step*/), the manifest itself excepted. Under DeepSpeed ZeRO every rank
writes its own shards there (`zero_pp_rank_<r>_mp_rank_00_optim_states.pt`, and with ZeRO-3
`…_model_states.pt`): a checkpoint is complete only with every rank's (a rank that wrote to
a disk rank 0 does not see is caught here, not at the resume). A rerun resumes from the newest
checkpoint whose files all match their manifest (`find_resume`): a damaged or cut-off one is
skipped with one printed line saying why, and the run falls back to the previous one (or
starts from scratch, saying so). The manifest's `run` is the source of truth for the
settings: a rerun with other settings is refused, whatever train_config.json says.
With several ranks, rank 0 alone reads and hashes the checkpoints and the other ranks wait
for its verdict (a torch.distributed broadcast): the files are read once, not once per rank.
Rotation (the newest `KEEP` complete checkpoints are kept) happens after the manifest is
written, so the previous complete checkpoint is never deleted before the new one is
complete.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback

from ..io import atomic_write_json, durable_write_json, file_sha256, fsync_dir

CHECKPOINTS = "checkpoints"
MANIFEST = "rrt_manifest.json"
MANIFEST_FORMAT = 1
KEEP = 2  # complete checkpoints kept during a run
# Settings that define a run: a resume with any of them changed would not continue it.
# warmup_steps is the resolved count (from warmup_ratio unless given). The memory switches
# (gradient_checkpointing, loss_chunk_tokens) are left out on purpose: they change no number,
# so a run may be resumed with them toggled (e.g. after running out of memory).
RUN_KEYS = ("model_dir", "data_dir", "max_tokens", "batch_tokens", "micro_batch_size", "lr", "warmup_steps",
            "min_lr_ratio", "weight_decay", "adam_betas", "seed", "teacher_dir", "kd_kind", "kd_weight",
            "kd_temperature", "bf16", "deepspeed", "world_size")


def step_of(path: Path) -> int:
    """The step of a `checkpoint-<step>` directory (-1 for anything else)."""
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _candidates(checkpoints: Path) -> list[Path]:
    """checkpoint-<step> directories, oldest first."""
    if not checkpoints.is_dir():
        return []
    return sorted((p for p in checkpoints.glob("checkpoint-*") if p.is_dir() and step_of(p) >= 0), key=step_of)


def is_main_process() -> bool:
    """Rank 0 of a torchrun/deepspeed launch (or the only process): the one that writes."""
    return int(os.environ.get("RANK", "0")) == 0


EXIT_KEYS = ("exit_weights", "exit_kd_weight")  # early-exit training; part of the run only when on
DATA_KEYS = ("data_after",)  # new data after a parent's run; part of the run only when set
DLT_KEYS = ("dlt",)  # Dynamic Layer Tying's settings; part of the run only when on
DLT_AGENT = "dlt_agent.pt"  # the DLT agent's state (rrt.train.dlt)


def run_settings(config: dict) -> dict:
    """The settings that define the run, as stored in JSON (tuples become lists)."""
    keys = RUN_KEYS + (EXIT_KEYS if config.get("exit_weights") is not None else ()) \
        + (DATA_KEYS if config.get("data_after") else ()) + (DLT_KEYS if config.get("dlt") else ())
    return json.loads(json.dumps({k: config[k] for k in keys}))


# --- the manifest -----------------------------------------------------------------------
def _files(checkpoint: Path) -> list[str]:
    """Every file under the checkpoint but the manifest and temp files (names starting with
    a dot), as sorted relative POSIX paths."""
    return sorted(p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*")
                  if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))


def _required(run: dict) -> list[tuple[str, ...]]:
    """What a checkpoint must hold to be resumed from: weights, optimizer (in DeepSpeed's
    own files under it), scheduler, every rank's RNG state and Trainer's state. Each entry
    is a group of alternatives."""
    world = run.get("world_size") or 1
    rng = [("rng_state.pth",)] if world == 1 else [(f"rng_state_{i}.pth",) for i in range(world)]
    optimizer = ("latest",) if run.get("deepspeed") else ("optimizer.pt",)
    return [("model.safetensors", "model.safetensors.index.json"), optimizer, ("scheduler.pt",), *rng,
            ("trainer_state.json",)] + ([(DLT_AGENT,)] if run.get("dlt") else [])


# DeepSpeed ZeRO's per-rank files: the optimizer shard (stages 1-3; `bf16_` with its bf16
# optimizer) and, with ZeRO-3, the model-state shard. Data-parallel rank, then model-parallel.
_ZERO_SHARD = re.compile(r"(?:^|/)(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_(optim|model)_states\.pt$")


def _missing_shards(files, world: int) -> list[str]:
    """The per-rank ZeRO shards a checkpoint lacks: once one rank's shard of a kind is there,
    every rank's must be (`world` ranks, no gaps). A non-ZeRO checkpoint has none to lack."""
    ranks: dict[str, set[int]] = {}
    for name in files:
        if m := _ZERO_SHARD.search(name):
            ranks.setdefault(m.group(2), set()).add(int(m.group(1)))
    return [f"rank {r}'s ZeRO {kind}-state shard" for kind, seen in sorted(ranks.items())
            for r in range(world) if r not in seen]


def write_manifest(checkpoint: Path, run: dict, step: int) -> dict:
    """Hash every file of `checkpoint` (flushing it to disk) and write its manifest, last and
    durably. Refuses a checkpoint that lacks something a resume needs."""
    checkpoint = Path(checkpoint)
    files = {}
    for name in _files(checkpoint):
        size, digest = file_sha256(checkpoint / name, fsync=True)
        files[name] = {"size": size, "sha256": digest}
    missing = [group[0] for group in _required(run) if not any(g in files for g in group)]
    missing += _missing_shards(files, run.get("world_size") or 1)
    if missing:
        raise RuntimeError(f"{checkpoint} lacks {', '.join(missing)}: not marking it complete "
                           f"(is it on a filesystem every rank writes to?)")
    for folder in sorted({(checkpoint / n).parent for n in files} | {checkpoint}):
        fsync_dir(folder)
    manifest = {"format": MANIFEST_FORMAT, "step": step, "run": run, "files": files}
    durable_write_json(checkpoint / MANIFEST, manifest)
    fsync_dir(checkpoint.parent)
    return manifest


def read_manifest(checkpoint: Path) -> tuple[dict | None, str | None]:
    """(manifest, None) or (None, why it cannot be used)."""
    path = Path(checkpoint) / MANIFEST
    if not path.is_file():
        return None, f"no {MANIFEST} (cut off while saving)"
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            return None, f"{MANIFEST} is not a format-{MANIFEST_FORMAT} manifest"
        if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("run"), dict):
            return None, f"{MANIFEST} lacks files or run"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{MANIFEST} is unreadable ({e})"
    return manifest, None


def verify(checkpoint: Path) -> tuple[dict | None, str | None]:
    """(manifest, None) if every file of the checkpoint matches its manifest and a resume
    has all it needs, else (None, the first reason it is not)."""
    checkpoint = Path(checkpoint)
    manifest, why = read_manifest(checkpoint)
    if manifest is None:
        return None, why
    if manifest.get("step") != step_of(checkpoint):
        return None, f"{MANIFEST} is for step {manifest.get('step')}"
    files = manifest["files"]
    for group in _required(manifest["run"]):
        if not any(g in files for g in group):
            return None, f"{group[0]} is not in {MANIFEST}"
    if shards := _missing_shards(files, manifest["run"].get("world_size") or 1):
        return None, f"{shards[0]} is not in {MANIFEST}"
    for name, entry in files.items():  # sizes first: cheap, and catch truncation
        path = checkpoint / name
        if not path.is_file():
            return None, f"{name} is missing"
        size = path.stat().st_size
        if size != entry.get("size"):
            return None, f"{name} has {size} bytes, {MANIFEST} says {entry.get('size')}"
    for name, entry in files.items():
        if file_sha256(checkpoint / name)[1] != entry.get("sha256"):
            return None, f"{name} does not match its sha256 in {MANIFEST}"
    return manifest, None


def _differs(before: dict, run: dict) -> str | None:
    changed = [k for k in RUN_KEYS + EXIT_KEYS if before.get(k) != run.get(k)]  # absent exit keys: None
    changed += [k for k in DATA_KEYS if (before.get(k) or []) != (run.get(k) or [])]  # absent: []
    changed += [k for k in DLT_KEYS if before.get(k) != run.get(k)]  # absent: None
    return changed[0] if changed else None


def _several_ranks() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def find_resume(checkpoints: Path, run: dict | None = None, log=print, clean: bool = True) -> Path | None:
    """The checkpoint to resume from: the newest complete one (`verify`), walking newest
    first. Each one skipped gets one line through `log` (rank 0 only) saying which and why;
    with none left the run starts from scratch (and says so). With `run`, the settings of
    the one found must be those of `run`, else ValueError naming the first differing key.
    With `clean`, rank 0 then removes the skipped (newer) ones: the run writes those steps
    again. Nothing is removed when it refuses.

    With several ranks (torch.distributed initialised) every rank must call it: rank 0
    decides and broadcasts its verdict, the others wait for it without reading a file and
    return the same checkpoint or raise the same refusal."""
    if not _several_ranks():
        return _find_resume(Path(checkpoints), run, log, clean)
    verdict: list = [None]
    if dist.get_rank() == 0:
        try:
            found = _find_resume(Path(checkpoints), run, log, clean)
            verdict = [("found", None if found is None else str(found))]
        except ValueError as e:
            verdict = [("refused", str(e))]
            dist.broadcast_object_list(verdict, src=0)
            raise
        except BaseException as e:  # the others must not wait for a verdict that never comes
            verdict = [("failed", f"{type(e).__name__}: {e}")]
            dist.broadcast_object_list(verdict, src=0)
            raise
    dist.broadcast_object_list(verdict, src=0)
    kind, value = verdict[0]
    if kind == "refused":
        raise ValueError(value)
    if kind == "failed":
        raise RuntimeError(f"rank 0 could not choose a checkpoint in {checkpoints}: {value}")
    return None if value is None else Path(value)


def _find_resume(checkpoints: Path, run: dict | None, log, clean: bool) -> Path | None:
    main = is_main_process()
    skipped, found = [], None
    for path in reversed(_candidates(checkpoints)):
        manifest, why = verify(path)
        if manifest is None:
            if main:
                log(f"skipping {path.name}: {why}")
            skipped.append(path)
            continue
        if run is not None and (k := _differs(manifest["run"], run)) is not None:
            raise ValueError(f"{checkpoints} holds a run with {k}={manifest['run'].get(k)!r}, not {run.get(k)!r}: "
                             f"remove it or use another output directory")
        found = path
        break
    if skipped and found is None and main:
        log(f"no complete checkpoint in {checkpoints}: starting from scratch")
    elif found is not None and main:  # the log says where a rerun or a requeued job went on
        log(f"resuming from {found.name}")
    if clean and main:
        for path in skipped:
            remove_checkpoint(path)
    return found


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint (see `find_resume`); incomplete newer ones are
    removed (they cannot be resumed from, and would otherwise be taken for the newest)."""
    return find_resume(checkpoints, None)


def remove_checkpoint(path: Path) -> None:
    """Manifest first, so that a removal cut off midway leaves an incomplete checkpoint,
    never one that claims to be complete."""
    (Path(path) / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def rotate(checkpoints: Path, keep: int = KEEP) -> None:
    """Keep the newest `keep` checkpoints that have a manifest; remove every older one."""
    done = [p for p in _candidates(checkpoints) if (p / MANIFEST).is_file()]
    if len(done) <= keep:
        return
    oldest_kept = step_of(done[-keep])
    for path in _candidates(checkpoints):
        if step_of(path) < oldest_kept:
            remove_checkpoint(path)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class ManifestCallback(TrainerCallback):
    """Marks each checkpoint complete once Trainer has written it (on_save runs after
    `Trainer._save_checkpoint`), then rotates old ones. Every rank waits until all ranks
    finished writing; rank 0 writes. Put it first among the callbacks, so that the manifest
    is written before any other callback's on_save runs. Trainer's own rotation
    (save_total_limit) must be off: it runs before on_save."""

    def __init__(self, run: dict, keep: int = KEEP):
        self.run, self.keep = run, keep

    def on_save(self, args, state, control, **kwargs):
        _barrier()
        if state.is_world_process_zero:
            checkpoints = Path(args.output_dir)
            write_manifest(checkpoints / f"checkpoint-{state.global_step}", self.run, state.global_step)
            rotate(checkpoints, self.keep)
        _barrier()


# --- the run's record -------------------------------------------------------------------
def record_run(out_dir: Path, run: dict) -> None:
    """out/train_config.json: the run's settings, for people (checkpoints carry their own)."""
    if is_main_process():
        atomic_write_json(Path(out_dir) / "train_config.json", run)


def remove_stale(out_dir: Path, keep_checkpoints: bool) -> None:
    """A complete run (out/final in place) needs no checkpoints and no leftover temp model:
    remove what a run killed after renaming its final model left (rank 0)."""
    if not is_main_process():
        return
    out_dir = Path(out_dir)
    checkpoints = out_dir / CHECKPOINTS
    if not keep_checkpoints and checkpoints.exists():
        for path in _candidates(checkpoints):
            remove_checkpoint(path)
        shutil.rmtree(checkpoints, ignore_errors=True)
        print(f"removed the checkpoints of the complete run in {checkpoints}")


def tokens_in_checkpoint(checkpoint: Path | None) -> int:
    if checkpoint is None:
        return 0
    return json.loads((checkpoint / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0)
