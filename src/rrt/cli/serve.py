"""Handlers of `rrt generate`, `rrt throughput` and `rrt simulate`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..errors import UsageError
from ..flags import section_from_pairs, section_of
from ..io import atomic_write_json, atomic_write_text
from ..model.load import load_config_dir, load_model_dir
from ..serve.engine import DepthwiseEngine
from ..serve.hf import hf_generate
from ..serve.simulate import exits_from_eval, simulate_throughput
from ..serve.throughput import heldout_prompts, measure_throughput
from ..settings import (
    EXIT_CRITERIA,
    NO_THRESHOLDS,
    ExitThresholds,
    ServeSettings,
    SimulateSettings,
    ThroughputSettings,
)
from . import checks
from .eval import criteria


def parse_exit(spec: str) -> tuple[str, float] | None:
    """'none' or CRITERION:THRESHOLD."""
    if spec == "none":
        return None
    criterion, sep, value = spec.partition(":")
    if not sep or criterion not in EXIT_CRITERIA:
        raise UsageError(f"--exit must be none or CRITERION:T with CRITERION in {', '.join(EXIT_CRITERIA)}, "
                         f"got {spec!r}")
    try:
        return criterion, float(value)
    except ValueError:
        raise UsageError(f"--exit {spec}: the threshold must be a number") from None


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--prompts file {path} does not exist")
    prompts = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompt = json.loads(line)["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UsageError(f'{path}:{n}: expected a JSON object with a "prompt" string') from None
        if not isinstance(prompt, str) or not prompt:
            raise UsageError(f'{path}:{n}: "prompt" must be a non-empty string')
        prompts.append(prompt)
    if not prompts:
        raise UsageError(f"--prompts file {path} holds no prompt")
    return prompts


def exit_thresholds(values: list[str] | None) -> dict[str, list[float]]:
    """--exit-thresholds CRITERION=T1,T2,... (repeatable, or `none`), read as `rrt eval`'s."""
    if not values:
        return {}
    return criteria(section_from_pairs(values, ExitThresholds, "--exit-thresholds", {"none": NO_THRESHOLDS}))


def generate(args) -> None:
    settings = section_of(args, ServeSettings, "serve")
    load_config_dir(args.model, "--model")
    checks.check_weights(args.model, "--model")
    checks.output_file(args.out, "--out")
    rule = parse_exit(args.exit)
    if rule is not None and settings.engine != "depthwise":
        raise UsageError("--exit needs --engine depthwise")
    prompts = read_prompts(args.prompts)
    if args.threads is not None:
        checks.at_least("--threads", args.threads, 1)
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = load_model_dir(args.model, "--model").eval()
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    eos = tokenizer.eos_token_id
    start = time.perf_counter()
    if settings.engine == "hf":
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
        tokens = hf_generate(model, ids, settings.max_new_tokens, batch_size=settings.max_batch, pad_token_id=pad,
                             eos_token_id=eos)
        loops = getattr(model.config, "num_loops", 1) if model.config.model_type == "recursive" else 1
        exit_loops = [[loops] * len(t) for t in tokens]
    else:
        try:
            engine = DepthwiseEngine(model, max_batch=settings.max_batch,
                                     max_len=max(map(len, ids)) + settings.max_new_tokens, eos_token_id=eos,
                                     exit_rule=rule, exit_kv=settings.exit_kv)
        except ValueError as e:
            raise UsageError(str(e)) from None
        done = engine.generate(ids, settings.max_new_tokens)
        tokens, exit_loops = [r.tokens for r in done], [r.exit_loops for r in done]
    seconds = time.perf_counter() - start
    lines = [json.dumps({"prompt": p, "token_ids": t, "text": tokenizer.decode(t, skip_special_tokens=True),
                         "exit_loops": e}, ensure_ascii=False) for p, t, e in zip(prompts, tokens, exit_loops)]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    generated = sum(map(len, tokens))
    print(f"{len(prompts)} prompts, {generated} tokens in {seconds:.1f} s ({generated / seconds:.1f} tokens/s, "
          f"{settings.engine}); written to {args.out}")


def throughput(args) -> None:
    settings = section_of(args, ThroughputSettings, "throughput")
    for flag, path in (("--original", args.original), ("--model", args.model)):
        if path is not None:
            config = load_config_dir(path, flag)
            checks.check_weights(path, flag)
    if not (Path(args.heldout) / "manifest.json").is_file():
        raise UsageError(f"--heldout {args.heldout} is not a token store written by `rrt tokenize` (no manifest.json)")
    checks.output_file(args.out, "--out")
    thresholds = exit_thresholds(args.exit_thresholds)
    if thresholds and getattr(config, "model_type", None) != "recursive":
        raise UsageError(f"--exit-thresholds: {args.model} is not a recursive model (no exits)")
    if args.threads is not None:
        checks.at_least("--threads", args.threads, 1)
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        prompts = heldout_prompts(args.heldout, settings.prompts, tuple(settings.prompt_tokens), settings.seed)
    except ValueError as e:
        raise UsageError(f"--heldout {e}") from None
    model = load_model_dir(args.model, "--model", dtype=dtype).to(device).eval()
    same = args.original is None or Path(args.original).resolve() == Path(args.model).resolve()
    original = None if same else load_model_dir(args.original, "--original", dtype=dtype).to(device).eval()
    try:
        result = measure_throughput(model, original, prompts, new_tokens=settings.max_new_tokens,
                                    batch=settings.max_batch, exit_thresholds=thresholds, exit_kv=settings.exit_kv,
                                    same_memory=settings.same_memory, same_model=same)
    except ValueError as e:  # the engine refuses the model (family, sharing)
        raise UsageError(f"--model {args.model}: {e}") from None
    result |= {"model": str(args.model), "original": str(args.original or args.model), "heldout": str(args.heldout)}
    atomic_write_json(args.out, result)
    print(f"written to {args.out}")


def simulate(args) -> None:
    settings = section_of(args, SimulateSettings, "throughput.simulate")
    for flag, path in (("--original", args.original), ("--model", args.model)):
        if path is not None:
            load_config_dir(path, flag)
            checks.check_weights(path, flag)
    checks.output_file(args.out, "--out")
    try:
        result = json.loads(Path(args.eval).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--eval {args.eval}: not a readable JSON file ({e.__class__.__name__})") from None
    thresholds = exit_thresholds(args.exit_thresholds)
    sets = list(((result.get("exits") or {}).get("ppl") or {}))
    heldout = args.heldout_set or (sets[0] if sets else None)
    try:
        exits = exits_from_eval(result, heldout, thresholds)
    except ValueError as e:
        raise UsageError(f"--eval {args.eval}: {e}") from None
    if args.threads is not None:
        checks.at_least("--threads", args.threads, 1)
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = load_model_dir(args.model, "--model", dtype=dtype).to(device).eval()
    same = args.original is None or Path(args.original).resolve() == Path(args.model).resolve()
    original = None if same else load_model_dir(args.original, "--original", dtype=dtype).to(device).eval()
    memory = None if settings.memory_mb is None else int(settings.memory_mb * 2**20)
    try:
        out = simulate_throughput(model, original, exits, prefix=settings.prefix_tokens,
                                  new_tokens=settings.new_tokens, max_batch=settings.max_batch, memory_bytes=memory,
                                  requests=settings.requests, seed=settings.seed)
    except ValueError as e:  # exits that do not fit the model, a budget below the weights, a refused model
        raise UsageError(f"--model {args.model}: {e}") from None
    out |= {"model_dir": str(args.model), "original_dir": str(args.original or args.model), "eval": str(args.eval),
            "heldout_set": heldout}
    atomic_write_json(args.out, out)
    print(f"written to {args.out}")
