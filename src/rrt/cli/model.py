"""Handlers of `rrt convert`, `rrt info`, `rrt export`, `rrt base-model` and `rrt reduce`."""
from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub import constants as hub_constants

from ..errors import UsageError, first_line
from ..io import atomic_output_dir, atomic_write_json
from ..model import base_models
from ..model.baselines import reduce_depth
from ..model.convert import convert as convert_model
from ..model.convert import parse_rank, rank_caps, recorded_rank
from ..model.describe import describe
from ..model.export_remote import save_self_contained
from ..model.export_unrolled import is_recursive, unroll
from ..model.families import family_of
from ..model.load import copy_tokenizer, load_config_dir, load_model_dir, pickles_in
from ..model.params import count_params
from ..model.sharing import depth_to_slot
from . import checks

_GROUP_NAMES = {"attn": "attention", "mlp": "MLP"}


def _rank_notes(args, text_config) -> list[str]:
    """One line per rank flag that some linear caps: what was built instead."""
    ranks = {"attn": ("--rank", args.rank), "mlp": ("--rank", args.rank)}
    if args.rank_attn is not None:
        ranks["attn"] = ("--rank-attn", args.rank_attn)
    if args.rank_mlp is not None:
        ranks["mlp"] = ("--rank-mlp", args.rank_mlp)
    notes = []
    for group, caps in rank_caps(text_config).items():
        flag, value = ranks[group]
        rank = parse_rank(value)
        if rank == "full" or rank == 0:
            continue
        capped = {path: cap for path, cap in caps.items() if cap < rank}
        if not capped:
            continue
        if recorded_rank(rank, caps) == "full" and rank > max(caps.values()):
            notes.append(f"note: {flag} {rank} is above the size of every {_GROUP_NAMES[group]} linear "
                         f"(at most {max(caps.values())}): built and recorded as full rank")
        elif rank > min(caps.values()):
            notes.append(f"note: {flag} {rank} is capped to the matrix size on "
                         + ", ".join(f"{path} ({cap})" for path, cap in capped.items()))
    return notes


def convert(args) -> None:
    out = checks.new_output_dir(args.out)
    for flag, value in (("--rank", args.rank), ("--rank-attn", args.rank_attn), ("--rank-mlp", args.rank_mlp)):
        if value is not None:
            try:
                parse_rank(value)
            except ValueError as e:
                raise UsageError(f"{flag}: {e}") from None
    checks.positive("--lora-alpha", args.lora_alpha)
    # Check what the config alone can tell before loading any weights.
    base_config = load_config_dir(args.base, "--base")
    try:
        family_of(base_config)
        depth_to_slot(base_config.num_hidden_layers, args.loops, args.sharing)
    except ValueError as e:
        raise UsageError(f"--loops {args.loops}: {e}" if "loops" in str(e) else str(e)) from None
    checks.check_weights(args.base, "--base")
    base = load_model_dir(args.base, "--base")
    try:
        model = convert_model(base, loops=args.loops, init=args.init, sharing=args.sharing, rank=args.rank,
                              rank_attn=args.rank_attn, rank_mlp=args.rank_mlp, lora_init=args.lora_init,
                              lora_alpha=args.lora_alpha, per_depth_norms=args.per_depth_norms,
                              stepwise_rule=args.stepwise_rule, norm_init=args.norm_init, seed=args.seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with checks.removed_on_error(out), atomic_output_dir(out) as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer(args.base, tmp)
    for note in _rank_notes(args, model.config.text_config):
        print(note)
    print(describe(model))
    print(f"saved to {out}")


def info(args) -> None:
    if args.json:
        checks.output_file(args.json, "--json")
    model = load_model_dir(args.model)
    print(describe(model))
    if args.json:
        atomic_write_json(args.json, count_params(model))


def export(args) -> None:
    out = checks.new_output_dir(args.out)
    if args.push_to_hub and hub_constants.HF_HUB_OFFLINE:
        raise UsageError("--push-to-hub: HF_HUB_OFFLINE is set, the hub is not reachable "
                         "(unset it, or export without --push-to-hub)")
    config = load_config_dir(args.model)
    try:
        family = family_of(config.text_config if config.model_type == "recursive" else config)
    except ValueError as e:
        raise UsageError(str(e)) from None
    checks.check_weights(args.model, "model")
    model = load_model_dir(args.model, dtype="auto")
    with checks.removed_on_error(out), atomic_output_dir(out) as tmp:
        if not is_recursive(model):
            model.save_pretrained(tmp)
            note = f"note: {args.model} is a plain {family.name} model: written as is (no custom code needed)"
        elif args.unrolled:
            plain = unroll(model)
            plain.save_pretrained(tmp)
            note = (f"unrolled: a plain {family.name} model of {plain.config.num_hidden_layers} layers "
                    f"(the {len(model.recursive_block)} shared layers' saving is gone)")
        else:
            save_self_contained(model, tmp)
            note = "self-contained: load with AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)"
        copy_tokenizer(args.model, tmp)
        if pickles_in(tmp):  # the input may hold pickles; the export never does
            raise RuntimeError(f"the export would hold pickles: {', '.join(pickles_in(tmp))}")
    print(note)
    print(f"saved to {out}")
    if args.push_to_hub:
        try:
            api = HfApi()
            api.create_repo(args.push_to_hub, repo_type="model", exist_ok=True)
            api.upload_folder(repo_id=args.push_to_hub, folder_path=str(out), repo_type="model")
        except Exception as e:
            raise UsageError(f"--push-to-hub {args.push_to_hub}: {first_line(e)} ({out} is written)") from None
        print(f"pushed to https://huggingface.co/{args.push_to_hub}")


def base_model(args) -> None:
    out = checks.new_output_dir(args.out)
    if args.source != "hub" and args.hub_id:
        raise UsageError(f"--hub-id needs --source hub (got --source {args.source})")
    if args.source == "tiny":
        checks.at_least("--layers", args.layers, 1)
        if args.hidden_size < 8 or args.hidden_size % 8:
            raise UsageError(f"--hidden-size must be a positive multiple of 8 (4 heads of even size), "
                             f"got {args.hidden_size}")
    with checks.removed_on_error(out):
        _write_base_model(args, out)


def _write_base_model(args, out: Path) -> None:
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
    out = checks.new_output_dir(args.out)
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
    checks.check_weights(args.base, "--base")
    base = load_model_dir(args.base, "--base")
    try:
        model = reduce_depth(base, num_layers, args.init, args.seed)
    except ValueError as e:
        raise UsageError(f"--layers/--init: {e}") from None
    with checks.removed_on_error(out), atomic_output_dir(out) as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer(args.base, tmp)
    print(describe(model))
    print(f"saved to {out}")
