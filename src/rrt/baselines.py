"""Reduced-size baselines (paper Sec. 3): a plain, non-recursive model with as many
layers as the recursive model has unique ones, so the non-embedding sizes match.
Initialised from the base model's first K layers (`lower`) or at random (`scratch`)."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import PreTrainedModel

from .families import family_of


@torch.no_grad()
def reduce_depth(base: PreTrainedModel, num_layers: int, init: str = "lower", seed: int = 0) -> PreTrainedModel:
    """The base family's own CausalLM with `num_layers` layers."""
    family = family_of(base.config)
    if not 1 <= num_layers <= base.config.num_hidden_layers:
        raise ValueError(f"layers must be in 1..{base.config.num_hidden_layers}, got {num_layers}")
    if init not in ("lower", "scratch"):
        raise ValueError(f"init must be 'lower' or 'scratch', got {init!r}")
    config = copy.deepcopy(base.config)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:  # Gemma 2/3: keep the first K depths' types
        config.layer_types = config.layer_types[:num_layers]
    torch.manual_seed(seed)
    model = family.causal_lm_cls(config)(config).to(base.get_input_embeddings().weight.dtype)
    if init == "lower":
        # The first K layers and everything outside the layers keep their names.
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        prefix = family.layers_path + "."
        stray = [k for k in unexpected
                 if not k.startswith(prefix) or int(k[len(prefix):].split(".")[0]) < num_layers]
        if missing or stray:
            raise RuntimeError(f"state dicts disagree: missing {missing[:3]}, unexpected {stray[:3]}")
    return model.eval()


def _cmd_reduce(args) -> None:
    from .cli import UsageError, load_config_dir, load_model_dir
    from .describe import describe
    from .io import atomic_output_dir

    if Path(args.out).exists():
        raise UsageError(f"--out {args.out} already exists")
    config = load_config_dir(args.base, "--base")
    try:
        family_of(config)
    except ValueError as e:
        raise UsageError(str(e)) from None
    base = load_model_dir(args.base, "--base")
    num_layers = args.layers
    if args.loops is not None:  # as many layers as a B-loop recursive model has unique ones
        if args.loops < 1 or config.num_hidden_layers % args.loops:
            raise UsageError(f"--loops {args.loops} does not divide the {config.num_hidden_layers} layers")
        num_layers = config.num_hidden_layers // args.loops
    try:
        model = reduce_depth(base, num_layers, args.init, args.seed)
    except ValueError as e:
        raise UsageError(f"--layers/--init: {e}") from None
    with atomic_output_dir(args.out) as tmp:
        model.save_pretrained(tmp)
        if any((Path(args.base) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(args.base).save_pretrained(tmp)
    print(describe(model))
    print(f"saved to {args.out}")


def register(sub) -> None:
    p = sub.add_parser("reduce", help="reduced-size non-recursive baseline: the first K layers, or random")
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True)
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--layers", type=int, help="K: number of layers to keep")
    size.add_argument("--loops", type=int, help="keep L/B layers: the size of a B-loop recursive model")
    p.add_argument("--init", default="lower", choices=["lower", "scratch"])
    p.add_argument("--seed", default=0, type=int)
    p.set_defaults(func=_cmd_reduce)
