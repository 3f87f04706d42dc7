"""Human-readable summaries: the layer map and the parameter counts."""
from __future__ import annotations

from torch import nn

from .modeling import RecursiveForCausalLM
from .params import count_params
from .sharing import canonical


def _fmt(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f}M)"


def describe(model: nn.Module) -> str:
    lines = []
    if isinstance(model, RecursiveForCausalLM):
        c = model.config
        lines.append(
            f"recursive {c.text_config.model_type}: L={len(c.layer_map)} depths = K={c.num_slots} shared layers "
            f"x B={c.num_loops} loops, sharing={c.sharing}, init={c.init}"
            + (f", stepwise_rule={c.stepwise_rule}" if c.stepwise_rule != "ends" else "")
            + (f", norm_init={c.norm_init}" if c.norm_init != "average" else "")
        )
        lines.append(
            f"relaxation: rank attn={c.lora_rank_attn} mlp={c.lora_rank_mlp}, lora_init={c.lora_init}, "
            f"per_depth_norms={c.per_depth_norms}"
        )
        lines.append(f"layer map: {' '.join(map(str, c.layer_map))} (depth -> shared slot); DLT form "
                     f"{' '.join(map(str, canonical(c.layer_map)))} (depth -> first depth of its layer)")
        lines.append("depths (depth -> shared slot, initialised from original layers):")
        for layer in model.depth_layers:
            src = c.init_sources[layer.slot] if c.init_sources else "random"
            lines.append(f"  depth {layer.depth:3d} -> slot {layer.slot:3d} (loop {layer.loop})  init {src}")
    else:
        lines.append(f"{model.config.model_type}: {model.config.num_hidden_layers} layers (not recursive)")
    counts = count_params(model)
    lines.append("parameters:")
    for name in ("non_embedding", "lora", "embedding", "total"):
        lines.append(f"  {name:14s} {_fmt(counts[name])}")
    return "\n".join(lines)
