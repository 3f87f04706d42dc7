# Helpers shared by the rules: config validation, the variants table, and where each
# variant's models live. Bookkeeping only: the work is in the `rrt` package.
import json
import os
import shlex
import sys

from snakemake.utils import validate

# The rules call a bare `rrt`: put the running interpreter's scripts directory (the venv's
# bin, where `rrt` is installed) first on PATH, so the documented `.venv/bin/snakemake ...`
# works from a shell that has not activated the venv. SLURM jobs re-run snakemake with
# the same interpreter and parse this file again, so they get the same PATH. dirname of
# sys.executable as is: resolving the venv's python symlink would leave the venv.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

from rrt.data.shards import files_to_read
from rrt.errors import UsageError
from rrt.settings import CORPUS_KEYS, NO_THRESHOLDS, TOKENIZE_KEYS, SettingError, resolve_config
from rrt.variants import Experiment, base_dir

# Every key typed and defaulted by rrt.settings (one line naming a bad or unknown key). The
# --config values (`--config 'train={tokens: 8192}'`: Snakemake hands nested values over as
# strings) are parsed by each key's type first. The schema then checks the same config.
try:
    _resolved = resolve_config(config, overrides=workflow.config_settings.config)
except SettingError as e:
    raise ValueError(f"config: {e}") from None
config.clear()
config.update(_resolved)
validate(config, "../schemas/config.schema.yaml")

# The variants resolved against the config (rrt.variants: budgets, model directories,
# parents and every check of the table, shared with `rrt plan` and the report).
try:
    EXPERIMENT = Experiment.from_config(config)
except UsageError as e:
    raise ValueError(str(e)) from None
VARIANTS = EXPERIMENT.table  # the table as read, indexed by name


wildcard_constraints:
    variant="|".join(VARIANTS.index),
    base="|".join(config["base_models"]),
    shard=r"\d+",
    shards=r"\d+",


def variant(wildcards):
    """A variant (rrt.variants.Variant), from a rule's wildcards or by name."""
    return EXPERIMENT[wildcards if isinstance(wildcards, str) else wildcards.variant]


def train_tokens(v):
    return v.tokens


def train_settings(v):
    """`rrt train --settings`: the resolved train section with the variant's own token
    budget, warmup (its `warmup` column, else the section's), early-exit recipe, DLT section
    (`dlt`: its DLT columns, rrt.variants.DLT_COLUMNS; null for the other kinds) and, on new
    data, its parents' budgets (`data_after`: their blocks are left out)."""
    settings = dict(config["train"], tokens=v.tokens)
    if EXPERIMENT.data_after(v.name):
        settings["data_after"] = EXPERIMENT.data_after(v.name)
    if v.warmup_steps is not None:
        settings["warmup_steps"] = v.warmup_steps
    recipe = EXPERIMENT.recipe(v.name)
    if recipe is not None:
        settings["early_exit"] = recipe
    if v.kd_loss != "-":
        settings["kd"] = dict(settings["kd"], loss=v.kd_loss)
    if v.dlt_settings is not None:  # over the config's train.dlt section, where it has one
        settings["dlt"] = dict(settings.get("dlt") or {}, **v.dlt_settings)
        settings["deepspeed"] = None  # one process (launch_prefix)
    return json.dumps(settings)


def convert_flags(v):
    """`rrt convert` flags of the variant's ablation columns that are set ("" when none)."""
    return "".join(f" --{column.replace('_', '-')} {value}" for column, value in v.convert_options.items())


def init_dir(wildcards):
    """The model uptraining starts from: the base, the converted model, or the parent's
    trained model (early-exit post-training). `wildcards` or a variant name."""
    return variant(wildcards).init_dir


def final_dir(wildcards):
    """The model that is evaluated: the base as is, the converted model when no tokens
    are asked for, else the uptrained one. `wildcards` or a variant name."""
    return variant(wildcards).final_dir


def converted(name):
    """Whether the variant's model is made by `convert` or `reduce` (not its parent's; a DLT
    run from scratch: `reduce` with loops 1)."""
    return EXPERIMENT[name].converted


def settings_json(section, keys, **over):
    """`rrt ... --settings`: the keys of the resolved config section `section` that the job
    uses (a param holding the whole section would rerun the job when any key changes), with
    `over` laid over them."""
    return json.dumps({**{k: config[section][k] for k in keys}, **over})


# The keys of the eval section every evaluation uses; the thresholds are added per variant.
EVAL_JOB_KEYS = ("source", "tasks", "limit", "prompt_format", "batch_size", "precision")


def eval_settings(name):
    """`rrt eval --settings` of a variant: early-exit variants with both threshold lists; the
    variants they post-train with the held-out thresholds alone (the tasks are rerun per
    threshold for the early-exit variants only); the others without thresholds (unused)."""
    if not EXPERIMENT.exit_evaluated(name):
        return settings_json("eval", EVAL_JOB_KEYS)
    return settings_json("eval", EVAL_JOB_KEYS + ("exit_thresholds", "exit_task_thresholds"),
                         **({} if EXPERIMENT[name].early_exit else {"exit_task_thresholds": NO_THRESHOLDS}))


def exit_eval_args(name):
    """`--exits` for the early-exit variants and the variants they post-train: every loop's exit
    and threshold is evaluated (`eval_settings`)."""
    return "--exits" if EXPERIMENT.exit_evaluated(name) else ""


# The keys of the throughput section a throughput job uses (`heldout` becomes its --heldout path).
THROUGHPUT_JOB_KEYS = ("prompts", "prompt_tokens", "max_new_tokens", "max_batch", "exit_kv", "same_memory", "seed")


def throughput_variants():
    return EXPERIMENT.throughput_variants()


def throughput_heldout():
    """The held-out set the throughput prompts come from."""
    return config["throughput"]["heldout"] or heldout_sets()[0]


def throughput_exit_args(name):
    """`rrt throughput` exit flags: an early-exit variant exits at each task threshold (the
    report pairs each with its task accuracy there); no flag for the others."""
    if EXPERIMENT[name].early_exit is None:
        return ""
    pairs = [f"{c}={','.join(str(t) for t in ts)}" for c, ts in config["eval"]["exit_task_thresholds"].items() if ts]
    return " ".join(f"--exit-thresholds {p}" for p in pairs)


def largest_budget(base):
    """The most tokens any variant of `base` trains on (0 when none trains)."""
    return EXPERIMENT.largest_budget(base)


def corpus_settings():
    """`rrt corpus --settings`: its keys of the data section (the hub locations with `hub` alone)."""
    keys = [k for k in CORPUS_KEYS if k in config["data"]]  # seed, ngram, ...: `rrt corpus`'s own defaults
    if config["data"]["source"] != "hub":
        keys = [k for k in keys if k not in ("slimpajama", "redpajama", "pg19")]
    return settings_json("data", keys)


def tokenize_settings():
    """`rrt tokenize --settings`: the block size and the caps."""
    return settings_json("data", TOKENIZE_KEYS)


def train_location():
    """Where the train files are: the embedded corpus's own, or SlimPajama (hub or mirror)."""
    return "results/data/corpus" if config["data"]["source"] == "embedded" else config["data"]["slimpajama"]


def shard_dirs(base):
    n = config["data"]["shards"]
    return [f"results/data/shards/{base}/{i}-of-{n}" for i in range(n)]


def min_train_tokens(base):
    """Tokens the gathered train set must hold: the largest budget (up to max_train_tokens)."""
    return EXPERIMENT.train_tokens_to_gather(base)


def train_files(base):
    """How many SlimPajama-layout train files the shard jobs of `base` read: enough for its
    largest budget (hub), all of them (embedded), or data.train_files."""
    d = config["data"]
    n = files_to_read(d["source"], d["train_files"], min_train_tokens(base), d["tokens_per_file"],
                      d["train_files_margin"])
    return "all" if n is None else n


def heldout_sets():
    return config["data"]["heldout"]


def threads_of(group):
    return config["resources"][group]["threads"]


def resources_of(group):
    """Snakemake resources of a rule group from config['resources'][group], in the names the
    SLURM plugin maps itself (and validates): mem_mb, runtime, cpus_per_task, gpu (one node), gres + nodes
    (several nodes: one `srun` task per node that our launcher starts; `mpi` makes the plugin
    run the rule's command in the allocation itself instead of inside its own srun)."""
    r = config["resources"][group]
    # cpus_per_task as well as threads: Snakemake caps threads at --cores (1 in a dry run).
    out = {"mem_mb": r["mem_mb"], "runtime": r["runtime"], "cpus_per_task": r["threads"]}
    if r.get("slurm_extra"):
        out["slurm_extra"] = r["slurm_extra"]
    nodes, gpus = r.get("nodes", 1), r.get("gpus", 0)
    if nodes > 1:
        out.update(nodes=nodes, tasks=nodes, mpi="srun", tasks_per_gpu=0)
        if gpus:
            out["gres"] = f"gpu:{gpus}"  # per node; `gpu` would ask for that many in all
    elif gpus:
        out["gpu"] = gpus
    return out


def launch_prefix(v=None):
    """`rrt launch ... -- ` that starts uptraining variant `v`'s processes (nodes, processes
    per node, GPUs per node), or nothing for one process: there `rrt launch` would only exec
    `rrt train`, after a Python start of its own (~4 CPU s per job). A DLT run is one
    process (at most one GPU): its reties change the parameters, which DDP and DeepSpeed
    fix when they wrap the model."""
    r = config["resources"]["train"]
    nodes, procs, gpus = r["nodes"], r["procs"] or max(r["gpus"], 1), r["gpus"]
    if v is not None and v.kind == "dlt":
        nodes, procs, gpus = 1, 1, min(gpus, 1)
    if nodes == 1 and procs == 1:
        return ""
    return (f"rrt launch --nodes {nodes} --procs-per-node {procs} --gpus-per-node {gpus} "
            f"--cpus-per-node {r['threads']} -- ")


def _harness_cache():
    """eval.data_cache where the tasks come from lm-eval's stock tasks, else None."""
    return config["eval"]["data_cache"] if config["eval"]["source"] == "harness" else None


def harness_cache_env():
    """The evaluate job's environment prefix: with eval.data_cache, `datasets` offline, so the
    job reads what `rrt fetch-eval-data` put there and never waits on an unreachable hub."""
    return "HF_DATASETS_OFFLINE=1 " if _harness_cache() else ""


def harness_cache_args():
    cache = _harness_cache()
    return f"--data-cache {shlex.quote(cache)} " if cache else ""


def optional_args(**kwargs):
    """--key value for every key whose value is not None."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in kwargs.items() if v is not None)


def base_model_args(spec):
    if spec["source"] == "hub":
        return f"--source hub --hub-id {spec['hub_id']}"
    if spec["source"] == "tiny":
        return f"--source tiny --layers {spec['tiny']['layers']} --hidden-size {spec['tiny']['hidden_size']}"
    return "--source embedded"


def needs_training(name):
    return EXPERIMENT[name].trains


def benchmark_files():
    """Every job's `benchmark:` record, which the stage-times table reads."""
    bases = sorted(EXPERIMENT.bases)
    files = [f"results/benchmarks/base_model/{b}.tsv" for b in bases]
    files += ["results/benchmarks/corpus.tsv"]
    files += [d.replace("results/data/shards/", "results/benchmarks/tokenize_shard/") + ".tsv"
              for b in bases for d in shard_dirs(b)]
    files += [f"results/benchmarks/tokenize/{b}.tsv" for b in bases]
    for v in EXPERIMENT:
        if v.converted:
            files.append(f"results/benchmarks/{'convert' if v.kind == 'recursive' else 'reduce'}/{v.name}.tsv")
        if v.trains:
            files.append(f"results/benchmarks/uptrain/{v.name}.tsv")
        files.append(f"results/benchmarks/evaluate/{v.name}.tsv")
    files += [f"results/benchmarks/throughput/{name}.tsv" for name in throughput_variants()]
    return files


def train_settings_json():
    """The train settings the report states as our assumptions where the paper is silent."""
    t = config["train"]
    return json.dumps({"adam_betas": t["adam_betas"], "kd": t["kd"], "lr": t["lr"],
                       "weight_decay": t["weight_decay"], "warmup_steps": t["warmup_steps"],
                       "warmup_ratio": t["warmup_ratio"]})



def chain_priority(wildcards):
    """Snakemake priority of a variant's convert/uptrain/evaluate/throughput job: 1 for the
    variants of a post-training chain (a parent and the variants trained from it), else 0.
    The chain is the longest sequence of jobs (parent's uptraining -> child's post-training ->
    its evaluation at every exit); started first, it ends beside the other jobs instead of
    running alone on one core at the end of `make run`."""
    name = wildcards.variant
    return int(EXPERIMENT[name].parent is not None or any(v.parent == name for v in EXPERIMENT))
