"""What an experiment costs before it runs (`rrt plan`): for each variant of a workflow
config, its parameters, training FLOPs, GPU-hours and SLURM jobs, peak memory per GPU and
disk. `plan_budget` is a pure function of the config (defaults filled in by rrt.settings) and the
variants table; `format_plan` prints its result.

Parameters. Every model is built on the meta device (no memory, milliseconds) from the
package's own classes: the base family's CausalLM for `original` and `full`, the same with
L/B layers for `reduced`, `RecursiveForCausalLM` with the variant's loops, sharing and rank
(every linear, as `rrt convert --rank`) for `recursive`; `rrt.model.params` counts them.
A `dlt` run (Dynamic Layer Tying) computes every one of the L depths, like `full`, but holds
(and its optimizer updates) only its unique layers: with a budget K (`dlt_max_unique`) its
parameters are those of the same model with K layers; without one the agent may keep every
layer untied, so it is costed as the untied model. It runs as one process on one GPU (no
DDP, no ZeRO: its reties change the parameters), so its wall-clock hours are its GPU-hours
and its memory is not partitioned.
P = unique parameters (total and non-embedding, LoRA included). N_eff = `compute_params`:
the matmul weights a token meets in the unrolled model, L_eff = K·B depths (each its shared
layer's linears plus its own LoRA) and the LM head.

FLOPs per token (ctx = data.block_size; d_attn = heads·head_dim; causal attention sees
ctx/2 keys on average; sliding windows are ignored, an upper bound):
    forward        F = 2·N_eff + 2·L_eff·ctx·d_attn
    training       3·F                                     (backward = 2 forwards)
                   + 2·N_layers + 2·L_eff·ctx·d_attn       with gradient checkpointing: the
                                                           depths are recomputed, the head not
                   + 2·N_head                              with train.loss_chunk_tokens: each
                                                           chunk's head reruns in backward
                   + F_teacher (+ 2·N_head_teacher if chunked)   with KD: a frozen forward
                   + (B−1)·6·N_head (12·N_head if chunked)  early-exit training: each
                                                           intermediate exit's head, forward and
                                                           backward (chunked: recomputed, with
                                                           the final exit's head as its KD target)
With checkpointing and chunked loss (the paper config) the recomputation is one whole
forward: 4·F (+ the teacher). Total = T × that, T = the variant's `tokens` (`default`:
train.tokens); `original` variants and 0-token ones train nothing (0).
GPU-hours = FLOPs / (peak · mfu) / 3600, the mfu applied to all FLOPs above (recomputation
included); compute hours = GPU-hours / (nodes · gpus); SLURM jobs = ceil(wall minutes /
(runtime − stop margin)), runtime = resources.train.runtime, margin = train.stop_margin_s.

Several nodes (resources.train.nodes = N > 1, G = N·g GPUs): every optimizer step moves the
gradients and parameters between nodes. With DeepSpeed ZeRO-2 (train.deepspeed) each step
reduce-scatters the gradients (every GPU keeps the reduced 1/G it updates) and all-gathers
the updated parameters; without it, DDP all-reduces the gradients, which NCCL does as the same
reduce-scatter plus all-gather. In a ring over the G GPUs each GPU sends (G−1)/G of the
tensor per collective, and each node's ring neighbour across the boundary is on the next
node, so each node sends over its inter-node links, per step:
    bytes/node/step = 2 · (G−1)/G · P · b     (0 on one node)
b = 2 with DeepSpeed (its bf16 engine reduces and gathers bf16 tensors), 4 without (DDP
all-reduces the fp32 gradients of the autocast run). At plan.internode_gbps Gb/s per node
    comm s/step = bytes/node/step · 8 / (internode_gbps · 1e9)
against  compute s/step = step tokens · FLOPs per token / (G · peak · mfu).
Both overlap (ZeRO's overlap_comm, DDP's bucketed all-reduce during backward): a step takes
the longer of the two, so wall-clock hours = compute hours · max(1, comm / compute), and the
variant is flagged when communication exceeds compute. Latency and intra-node (NVLink)
traffic are not counted.

Memory per GPU (GB = 1e9 bytes), as `rrt train` runs: fp32 weights under bf16 autocast,
AdamW, DeepSpeed ZeRO-2 over G = nodes·gpus GPUs when train.deepspeed is set (without it,
nothing is partitioned):
    weights 4·P   gradients 4·P/G   AdamW states 8·P/G   KD teacher in bf16 2·P_teacher
    activations of one micro-batch of s·b tokens (s = block_size, b = the micro-batch that
    `plan.plan_batches` gives for train.micro_batch_size), and logits.
Activations, bytes per token per depth: the tensors autograd saves, counted with
torch.autograd.graph.saved_tensors_hooks in a bf16-autocast forward with SDPA, which like
flash attention keeps no s² term (on the CPU; tests/test_budget.py checks the formula against
that count to 1.5%; CUDA's autocast keeps a few more ops in fp32, so read it as ±10% there):
    c_d·d + c_q·d_q + c_kv·d_kv + c_ffn·d_ffn
with d_q = heads·head_dim, d_kv = kv_heads·head_dim and the coefficients of the model's
family (`Family.activation_coeffs` in rrt.model.families; llama's 26, 4, 4, 8 are explained
in families/llama.py). A depth's LoRA adds 2·r per linear, and 2·in per linear that reads
the normalised residual (`Family.reads_residual`: its LoRA keeps its own bf16 copy of it).
The final norm and the head's input add f·d per token, f = `Family.final_bytes` (10 for
RMSNorm: input and output, 4 + 4, and the bf16 head input).
    without checkpointing   s·b·(L_eff·act_depth + f·d)
    with checkpointing      s·b·(L_eff·4·d + f·d) + s·b·act_depth   (the fp32 input of every
                            depth, plus one depth's activations while it is recomputed)
Logits, fp32 logits, softmax and gradient (×3), doubled with a teacher's (or the final
exit's as early-exit KD target), B times for early-exit training without chunks:
    unchunked s·b·V·4·3;  with train.loss_chunk_tokens c: min(c, s·b)·V·4·3.
The peak uses the config's own train.gradient_checkpointing; both activation figures are
reported. Not counted: the CUDA context and allocator slack (~1-3 GB), ZeRO's buckets, the
teacher's transient activations, temporaries of the optimizer step.

Data (`rrt.data.cost`): one copy of the tokens per base model (its tokenizer's), uint16 or
uint32 ids, holding the train files read for the largest budget among that base's variants
(capped by data.max_train_tokens) plus the held-out caps; and the core-hours to tokenize
them at PLAN's measured rate per core.
Checkpoints of a trained variant: KEEP = 2 kept × (weights 4·P + AdamW 8·P) + final weights 4·P.
"""
from __future__ import annotations

import copy
import math

import pandas as pd
import torch
from torch import nn

from ..data.cost import data_cost
from ..errors import UsageError
from ..model.convert import parse_rank
from ..model.families import family_of
from ..model.modeling import RecursiveConfig, RecursiveForCausalLM
from ..model.params import compute_params, count_params
from ..model.relax import resolve_rank
from ..model.shapes import base_config
from ..settings import EARLY_EXIT, PLAN, DataSettings, PlanSettings, TrainResources, TrainSettings
from ..variants import Experiment
from .checkpoints import KEEP
from .plan import plan_batches

GB = 1e9

CHECKPOINT_INPUT_BYTES = 4      # per token × d per depth with checkpointing: the fp32 layer input


def _dims(text) -> dict[str, int]:
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return {"d": text.hidden_size, "d_q": heads * head_dim, "d_kv": kv_heads * head_dim,
            "d_ffn": text.intermediate_size, "vocab": text.vocab_size}


def _layer_linears(text) -> list[tuple[str, int, int]]:
    """(path, in_features, out_features) of every linear of one decoder layer."""
    family = family_of(text)
    with torch.device("meta"):
        layer = family.layer_cls(text)(text, layer_idx=0)
    return [(p, m.in_features, m.out_features) for p, m in layer.named_modules() if isinstance(m, nn.Linear)]


def activation_bytes_per_depth(text, rank: int | str = 0, rank_mlp: int | str | None = None) -> int:
    """Bytes autograd keeps per token for one depth (see the module docstring), its LoRA
    of rank `rank` on every linear included (`rank_mlp`, when given, on the MLP's)."""
    family = family_of(text)
    dims = _dims(text)
    c_d, c_q, c_kv, c_ffn = family.activation_coeffs
    total = c_d * dims["d"] + c_q * dims["d_q"] + c_kv * dims["d_kv"] + c_ffn * dims["d_ffn"]
    for path, fan_in, fan_out in _layer_linears(text):
        group_rank = rank_mlp if rank_mlp is not None and family.module_group(path) == "mlp" else rank
        if group_rank == "full" or group_rank:
            r = resolve_rank(group_rank, fan_in, fan_out)
            total += 2 * r + (2 * fan_in if path.rsplit(".", 1)[-1] in family.reads_residual else 0)
    return total


def model_size(text, kind: str, loops: int = 1, sharing: str = "cycle", rank: int | str = 0,
               rank_mlp: int | str | None = None, unique_layers: int | None = None) -> dict:
    """Counts of one variant's model, built on the meta device: params, non_embedding,
    embedding, lora (unique), n_layers, n_head, n_eff (compute params, `compute_params`),
    depths (L_eff), d_attn (per depth), act_depth (activation bytes per token per depth),
    hidden, vocab. `unique_layers` (kind `dlt`): the unique-layer budget K; the counts of
    parameters are then those of K layers, the compute that of every depth."""
    text = copy.deepcopy(text)
    family = family_of(text)
    if kind == "reduced":
        layers = text.num_hidden_layers
        if loops < 1 or layers % loops:
            raise ValueError(f"loops={loops} does not divide the {layers} layers of the base model")
        text = family.with_layers(text, layers // loops)  # as rrt reduce does
    lora = 0
    if kind == "recursive":
        rank = parse_rank(rank)
        rank_mlp = rank if rank_mlp is None else parse_rank(rank_mlp)
        lora = rank
        config = RecursiveConfig(text_config=text, num_loops=loops, sharing=sharing,
                                 lora_rank_attn=rank, lora_rank_mlp=rank_mlp)
        with torch.device("meta"):
            model = RecursiveForCausalLM(config)
    else:
        with torch.device("meta"):
            model = family.causal_lm_cls(text)(text)
    counts, compute = count_params(model), compute_params(model)
    if kind == "dlt" and unique_layers is not None:
        if not 1 <= unique_layers <= text.num_hidden_layers:
            raise ValueError(f"dlt_max_unique {unique_layers} is not in 1..{text.num_hidden_layers} (the base's layers)")
        tied = family.with_layers(text, unique_layers)
        with torch.device("meta"):
            counts = count_params(family.causal_lm_cls(tied)(tied))
    dims = _dims(text)
    return {
        "params": counts["total"], "non_embedding": counts["non_embedding"], "embedding": counts["embedding"],
        "lora": counts["lora"], "n_layers": compute["layers"], "n_head": compute["head"], "n_eff": compute["total"],
        "depths": text.num_hidden_layers, "d_attn": dims["d_q"], "hidden": dims["d"], "vocab": dims["vocab"],
        "act_depth": activation_bytes_per_depth(text, lora, rank_mlp if kind == "recursive" else None),
        "final_bytes": family.final_bytes * dims["d"],
    }


def train_flops_per_token(size: dict, ctx: int, *, checkpointing: bool, chunked: bool,
                          teacher: dict | None = None, exits: int = 1) -> float:
    """Training FLOPs per token of a model sized by `model_size` (formula: module docstring)."""
    attention = 2 * size["depths"] * ctx * size["d_attn"]
    forward = 2 * size["n_eff"] + attention
    flops = 3 * forward
    if checkpointing:
        flops += 2 * size["n_layers"] + attention
    if chunked:
        flops += 2 * size["n_head"]
    if teacher is not None:
        flops += 2 * teacher["n_eff"] + 2 * teacher["depths"] * ctx * teacher["d_attn"]
        if chunked:
            flops += 2 * teacher["n_head"]
    flops += (exits - 1) * (12 if chunked else 6) * size["n_head"]
    return flops


def activation_bytes(size: dict, tokens: int, checkpointing: bool) -> float:
    """Activations of one micro-batch of `tokens` tokens (s·b), with or without checkpointing."""
    final = size["final_bytes"]
    if checkpointing:
        return tokens * (size["depths"] * CHECKPOINT_INPUT_BYTES * size["hidden"] + final + size["act_depth"])
    return tokens * (size["depths"] * size["act_depth"] + final)


def logits_bytes(vocab: int, tokens: int, chunk: int | None, teacher: bool, exits: int = 1) -> float:
    if chunk:
        return min(chunk, tokens) * vocab * 4 * 3 * (2 if teacher or exits > 1 else 1)
    return tokens * vocab * 4 * 3 * (2 if teacher else 1) * exits


def model_counts(model) -> dict:
    """The counts `train_flops_per_token` reads, from a model in memory (the trainer's
    running FLOPs estimate, `rrt.train.monitor`): the same as `model_size` gives for it."""
    text = model.config.get_text_config()
    compute = compute_params(model)
    return {"n_layers": compute["layers"], "n_head": compute["head"], "n_eff": compute["total"],
            "depths": text.num_hidden_layers, "d_attn": _dims(text)["d_q"]}


def internode_bytes_per_step(params: int, nodes: int, gpus_per_node: int, bytes_per_value: int) -> float:
    """Bytes each node sends to other nodes per optimizer step: a ring reduce-scatter of the
    gradients and all-gather of the parameters over all G GPUs (module docstring)."""
    if nodes <= 1:
        return 0.0
    world = nodes * gpus_per_node
    return 2 * (world - 1) / world * params * bytes_per_value


def jobs_needed(wall_hours: float, runtime_min: float, stop_margin_s: float) -> float:
    """Time-limited jobs a run of `wall_hours` needs: each does runtime − margin minutes of
    work. NaN when the margin leaves no time; 0 for no work."""
    if wall_hours <= 0:
        return 0
    work = runtime_min - stop_margin_s / 60
    if work <= 0:
        return math.nan
    return math.ceil(round(wall_hours * 60 / work, 9))


def _setting(config: dict, gpu: str | None, mfu: float | None) -> tuple[str, float]:
    plan = config.get("plan") or {}
    gpu = gpu if gpu is not None else plan.get("gpu", PLAN["gpu"])
    mfu = mfu if mfu is not None else plan.get("mfu", PLAN["mfu"])
    if gpu not in PLAN["gpu_specs"]:
        raise UsageError(f"plan.gpu: unknown GPU {gpu!r} (known: {', '.join(PLAN['gpu_specs'])})")
    if not isinstance(mfu, (int, float)) or not (0 < mfu <= 1):
        raise UsageError(f"plan.mfu must be in (0, 1], got {mfu!r}")
    return gpu, float(mfu)


def plan_budget(config: dict, variants: Experiment | pd.DataFrame, *, gpu: str | None = None,
                mfu: float | None = None, base_configs: dict | None = None) -> pd.DataFrame:
    """One row per variant (raw units: parameters, FLOPs, hours, GB), in the table's order.
    `config` is a workflow config (`rrt.settings.resolve_config`; the keys it lacks take
    rrt.settings' defaults); `variants` its Experiment, or a variants table to resolve
    against it; `gpu`/`mfu` override its `plan` section; `base_configs`
    ({base: transformers config}) skips `shapes.base_config`. The assumptions are in
    `.attrs` (gpu, mfu, GPUs, runtime, micro-batch, data on disk, notes)."""
    gpu, mfu = _setting(config, gpu, mfu)
    spec = PLAN["gpu_specs"][gpu]
    # The sections the plan reads, their missing keys filled by rrt.settings.
    train = TrainSettings.from_dict(config.get("train") or {}, "train").to_dict()
    data = DataSettings.from_dict(config.get("data") or {}, "data").to_dict()
    resources = TrainResources.from_dict((config.get("resources") or {}).get("train") or {}, "resources.train").to_dict()
    if not isinstance(variants, Experiment):
        variants = Experiment({**config, "train": train, "early_exit": config.get("early_exit") or EARLY_EXIT},
                              variants)
    notes = []
    nodes, per_node = resources["nodes"], resources["gpus"]
    if per_node == 0:
        notes.append("resources.train.gpus is 0 (a CPU run): planned for 1 GPU")
    world = nodes * max(per_node, 1)
    runtime, margin, block = float(resources["runtime"]), float(train["stop_margin_s"]), data["block_size"]
    try:
        micro, _, step_tokens = plan_batches(int(train["batch_tokens"]), block, int(train["micro_batch_size"]),
                                             world)
    except ValueError as e:
        raise UsageError(f"train.batch_tokens: {e}") from None
    if micro < train["micro_batch_size"]:
        notes.append(f"micro-batch {micro}, not train.micro_batch_size {train['micro_batch_size']}: "
                     f"one optimizer step of train.batch_tokens needs fewer blocks per GPU")
    micro_tokens = micro * block
    gbps = PlanSettings.from_dict(config.get("plan") or {}, "plan").internode_gbps
    value_bytes = 2 if train.get("deepspeed") else 4  # what ZeRO-2 (bf16) or DDP (fp32 grads) sends
    checkpointing = bool(train["gradient_checkpointing"])
    chunk = train.get("loss_chunk_tokens")
    zero = world if train.get("deepspeed") else 1
    if world > 1 and not train.get("deepspeed"):
        notes.append("train.deepspeed is not set: gradients and AdamW states are not partitioned")

    configs = dict(base_configs or {})
    sizes: dict[tuple, dict] = {}

    def size_of(base: str, kind: str, loops: int = 1, sharing: str = "cycle", rank="0", rank_mlp=None,
                unique_layers: int | None = None) -> dict:
        key = (base, kind, loops, *((sharing, rank, rank_mlp) if kind == "recursive" else ("-", "0", None)),
               unique_layers)
        if key not in sizes:
            if base not in configs:
                if base not in (config.get("base_models") or {}):
                    raise UsageError(f"variant base {base!r} is not in base_models")
                configs[base] = base_config(config["base_models"][base])
            try:
                sizes[key] = model_size(configs[base], kind, loops, sharing, rank, rank_mlp, unique_layers)
            except ValueError as e:
                raise UsageError(f"base model {base!r}: {e}") from None
        return sizes[key]

    rows = []
    if any(v.kind == "dlt" and v.dlt_max_unique == "-" for v in variants):
        notes.append("dlt rows without dlt_max_unique are costed as the untied model (the agent may keep every layer)")
    if any(v.kind == "dlt" and v.trains for v in variants) and world > 1:
        notes.append("dlt rows run on one GPU (one process, no ZeRO: a retie changes the parameters, which DDP and "
                     "DeepSpeed fix when they wrap the model)")
    dlt_micro_tokens = plan_batches(int(train["batch_tokens"]), block, int(train["micro_batch_size"]), 1)[0] * block
    for v in variants:
        unique = int(v.dlt_max_unique) if v.kind == "dlt" and v.dlt_max_unique != "-" else None
        size = size_of(v.base, v.kind, v.loops, v.sharing, *v.ranks, unique_layers=unique)  # attention's rank, MLP's
        teacher = size_of(v.base, "original") if v.kd else None
        out = {
            "variant": v.name, "kind": v.kind, "base": v.base, "loops": v.loops, "rank": v.rank,
            "kd": v.kd, "tokens": v.tokens if v.trains else 0,
            "params": size["params"], "params_non_embedding": size["non_embedding"], "params_lora": size["lora"],
            "n_eff": size["n_eff"], "depths": size["depths"],
        }
        warnings = []
        # A DLT run is one process: all of the work on one GPU, nothing partitioned.
        run_world, run_zero, run_tokens = (1, 1, dlt_micro_tokens) if v.kind == "dlt" else (world, zero, micro_tokens)
        if v.trains:
            per_token = train_flops_per_token(size, block, checkpointing=checkpointing, chunked=bool(chunk),
                                              teacher=teacher, exits=v.exits)
            flops = v.tokens * per_token
            gpu_flops_per_s = spec["peak_tflops"] * 1e12 * mfu
            gpu_hours = flops / gpu_flops_per_s / 3600
            p = size["params"]
            step_s = step_tokens * per_token / (run_world * gpu_flops_per_s)
            # a DLT run stays on one GPU of one node: nothing crosses nodes
            comm_bytes = 0 if v.kind == "dlt" else internode_bytes_per_step(p, nodes, max(per_node, 1), value_bytes)
            comm_s = comm_bytes * 8 / (gbps * 1e9)
            wall = gpu_hours / run_world * max(1.0, comm_s / step_s)  # the slower of the two bounds a step
            jobs = jobs_needed(wall, runtime, margin)
            memory = {
                "mem_weights_gb": 4 * p / GB,
                "mem_grads_gb": 4 * p / run_zero / GB,
                "mem_optimizer_gb": 8 * p / run_zero / GB,
                "mem_teacher_gb": 2 * teacher["params"] / GB if v.kd else 0.0,
                "mem_activations_gb": activation_bytes(size, run_tokens, False) / GB,
                "mem_activations_checkpointed_gb": activation_bytes(size, run_tokens, True) / GB,
                "mem_logits_gb": logits_bytes(size["vocab"], run_tokens, chunk, v.kd, v.exits) / GB,
            }
            act = memory["mem_activations_checkpointed_gb" if checkpointing else "mem_activations_gb"]
            memory["mem_peak_gb"] = (memory["mem_weights_gb"] + memory["mem_grads_gb"] + memory["mem_optimizer_gb"]
                                     + memory["mem_teacher_gb"] + act + memory["mem_logits_gb"])
            checkpoint_gb = (KEEP * 12 * p + 4 * p) / GB
            if memory["mem_peak_gb"] > spec["memory_gb"]:
                warnings.append(f"peak {memory['mem_peak_gb']:.0f} GB > {spec['memory_gb']} GB")
            if math.isnan(jobs):
                warnings.append(f"runtime {runtime:g} min <= stop margin {margin / 60:g} min")
            if comm_s > step_s:
                warnings.append(f"inter-node traffic {comm_s:.3g} s/step > compute {step_s:.3g} s/step "
                                f"at {gbps:g} Gb/s per node")
        else:
            flops = gpu_hours = wall = jobs = checkpoint_gb = step_s = comm_bytes = comm_s = 0.0
            memory = dict.fromkeys(("mem_weights_gb", "mem_grads_gb", "mem_optimizer_gb", "mem_teacher_gb",
                                    "mem_activations_gb", "mem_activations_checkpointed_gb", "mem_logits_gb",
                                    "mem_peak_gb"), math.nan)
        rows.append({**out, "flops": flops, "gpu_hours": gpu_hours, "wall_hours": wall, "jobs": jobs,
                     "step_s": step_s, "comm_gb_per_step": comm_bytes / GB, "comm_s": comm_s, **memory,
                     "checkpoint_gb": checkpoint_gb, "warning": "; ".join(warnings)})
    table = pd.DataFrame(rows, columns=COLUMNS)

    disk = {}
    data_threads = int(((config.get("resources") or {}).get("data") or {}).get("threads", 1))
    for base in variants.bases:
        disk[base] = data_cost(data, variants.train_tokens_to_gather(base), size_of(base, "original")["vocab"],
                               data_threads)
    table.attrs.update({
        "gpu": gpu, "peak_tflops": spec["peak_tflops"], "memory_gb": spec["memory_gb"], "mfu": mfu,
        "nodes": nodes, "gpus_per_node": max(per_node, 1), "gpus": world, "runtime_min": runtime,
        "stop_margin_s": margin, "block_size": block, "micro_batch": micro,
        "gradient_checkpointing": checkpointing, "loss_chunk_tokens": chunk, "zero_partitions": zero,
        "step_tokens": step_tokens, "internode_gbps": gbps, "comm_bytes_per_value": value_bytes,
        "data": disk, "notes": notes,
    })
    return table


COLUMNS = ["variant", "kind", "base", "loops", "rank", "kd", "tokens", "params", "params_non_embedding", "params_lora",
           "n_eff", "depths", "flops", "gpu_hours", "wall_hours", "jobs", "step_s", "comm_gb_per_step", "comm_s",
           "mem_weights_gb", "mem_grads_gb",
           "mem_optimizer_gb", "mem_teacher_gb", "mem_activations_gb", "mem_activations_checkpointed_gb",
           "mem_logits_gb", "mem_peak_gb", "checkpoint_gb", "warning"]


def _human(v: float) -> str:
    """0, 1,234, 12.3 or 0.0123: one decimal from 1 up, three significant digits below."""
    if v is None or math.isnan(v):
        return "-"
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.1f}" if abs(v) >= 1 else f"{v:.3g}"


def _num(fmt: str):
    return lambda v: "-" if v is None or math.isnan(v) else format(v, fmt)


def _size(gb: float) -> str:
    return f"{gb / 1000:.2f} TB" if gb >= 1000 else f"{_human(gb)} GB"


def _count(n: float) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def format_plan(table: pd.DataFrame, title: str = "") -> str:
    """The plan as text: assumptions, one row per variant in human units (B = 1e9
    parameters or tokens, EFLOP = 1e18 FLOPs, memory per GPU in GB), totals and notes."""
    a = table.attrs
    chunk = f"loss in chunks of {a['loss_chunk_tokens']} tokens" if a["loss_chunk_tokens"] else "full logits"
    lines = [
        (f"{title}: " if title else "") + f"{len(table)} variants on {a['gpu']} ({a['peak_tflops']} TFLOP/s bf16 dense, "
        f"{a['memory_gb']} GB) at MFU {a['mfu']:.2f}; {a['nodes']} node(s) x {a['gpus_per_node']} GPU(s), "
        f"jobs of {a['runtime_min']:g} min (stop margin {a['stop_margin_s'] / 60:g} min)",
        f"per GPU: micro-batch {a['micro_batch']} x {a['block_size']} tokens, gradient checkpointing "
        f"{'on' if a['gradient_checkpointing'] else 'off'}, {chunk}, "
        + (f"ZeRO-2 over {a['zero_partitions']} GPUs" if a["zero_partitions"] > 1 else "no ZeRO partitioning"),
    ]
    several = a["nodes"] > 1
    if several:
        lines.append(
            f"between nodes: {a['internode_gbps']:g} Gb/s per node (plan.internode_gbps); per step each node sends "
            f"2·(G−1)/G·P·{a['comm_bytes_per_value']} bytes (gradients reduce-scattered, parameters all-gathered"
            f"{', bf16' if a['comm_bytes_per_value'] == 2 else ', fp32 DDP all-reduce'}) while the GPUs compute "
            f"{a['step_tokens']:,} tokens; the longer of the two bounds the step")
    lines.append("")
    shown = pd.DataFrame({
        "variant": table["variant"], "kind": table["kind"],
        "T(B)": table["tokens"] / 1e9, "P(B)": table["params"] / 1e9,
        "P_ne(B)": table["params_non_embedding"] / 1e9, "N_eff(B)": table["n_eff"] / 1e9,
        "EFLOP": table["flops"] / 1e18, "GPU-h": table["gpu_hours"], "wall-h": table["wall_hours"],
        "jobs": table["jobs"],
        **({"step-s": table["step_s"], "comm GB": table["comm_gb_per_step"], "comm-s": table["comm_s"]}
           if several else {}),
        "w": table["mem_weights_gb"], "g+opt": table["mem_grads_gb"] + table["mem_optimizer_gb"],
        "teach": table["mem_teacher_gb"],
        "act": table["mem_activations_checkpointed_gb" if a["gradient_checkpointing"] else "mem_activations_gb"],
        "act_noGC" if a["gradient_checkpointing"] else "act_GC":
            table["mem_activations_gb" if a["gradient_checkpointing"] else "mem_activations_checkpointed_gb"],
        "logits": table["mem_logits_gb"], "peak GB": table["mem_peak_gb"], "ckpt GB": table["checkpoint_gb"],
        "warning": table["warning"],
    })
    billions = lambda v: "-" if math.isnan(v) else f"{v:.3f}" if v >= 0.01 else f"{v:.3g}"  # noqa: E731
    formats = {"T(B)": _human, "P(B)": billions, "P_ne(B)": billions, "N_eff(B)": billions,
               "EFLOP": _human, "GPU-h": _human, "wall-h": _human, "jobs": _num(".0f"), "ckpt GB": _human,
               "step-s": _num(".3g"), "comm GB": _num(".3g"), "comm-s": _num(".3g")}
    formatters = {c: formats.get(c, _human) for c in shown.columns if c not in ("variant", "kind", "warning")}
    lines.append(shown.to_string(index=False, formatters=formatters, justify="right", na_rep="-"))
    trained = table["flops"] > 0
    final_gb = (4 * table.loc[trained, "params"]).sum() / GB
    data_gb = sum(d["gb"] for d in a["data"].values())
    lines += [
        "",
        f"total: {trained.sum()} runs, {_human(table['flops'].sum() / 1e18)} EFLOP, "
        f"{_human(table['gpu_hours'].sum())} GPU-h on {a['gpu']}, {_human(table['wall_hours'].sum())} h wall one run "
        f"after another on {a['gpus']} GPU(s), {table['jobs'].sum():.0f} jobs; "
        f"peak memory {_human(table['mem_peak_gb'].max())} GB per GPU"
        if trained.any() else f"total: nothing to train ({len(table)} variants evaluated as they are)",
        f"disk: checkpoints {_size(table['checkpoint_gb'].sum())} if every run is in flight at once "
        f"({_size(final_gb)} of final weights stay); tokens {_size(data_gb)} ("
        + ", ".join(f"{b} {_count(d['train_tokens'])} + {_count(d['heldout_tokens'])} held-out tokens "
                    f"x {d['token_bytes']} bytes" for b, d in a["data"].items()) + ")",
        "tokenize: " + ", ".join(
            f"{b} {_human(d['core_hours'])} core-h" + (f" ({d['train_files']:,} files)" if d["train_files"] else "")
            for b, d in a["data"].items())
        + f" at {PLAN['tokenize_tokens_per_s_per_core'] / 1e6:.2f}M tokens/s per core; "
        + f"{next(iter(a['data'].values()))['shards']} shard job(s) per base, "
        + f"~{_human(60 * max(d['shard_wall_hours'] for d in a['data'].values()))} min each on "
        + "resources.data.threads cores (reading from the hub can take longer)",
    ]
    warned = table["warning"].astype(bool).sum()
    if warned:
        lines.append(f"warning: {warned} variant(s) flagged in the warning column")
    lines += [f"note: {n}" for n in a["notes"]]
    return "\n".join(lines)
