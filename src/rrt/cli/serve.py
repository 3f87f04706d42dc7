"""Handlers of `rrt generate`, `rrt throughput` and `rrt simulate`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..errors import UsageError
from ..io import atomic_write_json, atomic_write_text
from ..model.load import load_config_dir, load_model_dir
from ..serve.engine import DepthwiseEngine
from ..serve.hf import hf_generate
from ..serve.simulate import exits_from_eval, simulate_throughput
from ..serve.throughput import heldout_prompts, measure_throughput
from ..settings import EXIT_CRITERIA
from . import checks
from .eval import parse_thresholds


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


def generate(args) -> None:
    load_config_dir(args.model, "--model")
    checks.check_weights(args.model, "--model")
    checks.output_file(args.out, "--out")
    checks.at_least("--max-new-tokens", args.max_new_tokens, 1)
    checks.at_least("--max-batch", args.max_batch, 1)
    rule = parse_exit(args.exit)
    if rule is not None and args.engine != "depthwise":
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
    if args.engine == "hf":
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
        tokens = hf_generate(model, ids, args.max_new_tokens, batch_size=args.max_batch, pad_token_id=pad,
                             eos_token_id=eos)
        loops = getattr(model.config, "num_loops", 1) if model.config.model_type == "recursive" else 1
        exit_loops = [[loops] * len(t) for t in tokens]
    else:
        try:
            engine = DepthwiseEngine(model, max_batch=args.max_batch, max_len=max(map(len, ids)) + args.max_new_tokens,
                                     eos_token_id=eos, exit_rule=rule, exit_kv=args.exit_kv)
        except ValueError as e:
            raise UsageError(str(e)) from None
        done = engine.generate(ids, args.max_new_tokens)
        tokens, exit_loops = [r.tokens for r in done], [r.exit_loops for r in done]
    seconds = time.perf_counter() - start
    lines = [json.dumps({"prompt": p, "token_ids": t, "text": tokenizer.decode(t, skip_special_tokens=True),
                         "exit_loops": e}, ensure_ascii=False) for p, t, e in zip(prompts, tokens, exit_loops)]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    generated = sum(map(len, tokens))
    print(f"{len(prompts)} prompts, {generated} tokens in {seconds:.1f} s ({generated / seconds:.1f} tokens/s, "
          f"{args.engine}); written to {args.out}")


def _prompt_lengths(spec: str) -> tuple[int, int]:
    low, sep, high = spec.partition(",")
    try:
        lengths = (int(low), int(high if sep else low))
    except ValueError:
        raise UsageError(f"--prompt-tokens must be MIN,MAX (token counts), got {spec!r}") from None
    if not 1 <= lengths[0] <= lengths[1]:
        raise UsageError(f"--prompt-tokens must be 1 <= MIN <= MAX, got {spec!r}")
    return lengths


def throughput(args) -> None:
    for flag, path in (("--original", args.original), ("--model", args.model)):
        if path is not None:
            config = load_config_dir(path, flag)
            checks.check_weights(path, flag)
    if not (Path(args.heldout) / "manifest.json").is_file():
        raise UsageError(f"--heldout {args.heldout} is not a token store written by `rrt tokenize` (no manifest.json)")
    checks.output_file(args.out, "--out")
    for flag, value in (("--prompts", args.prompts), ("--max-new-tokens", args.max_new_tokens),
                        ("--max-batch", args.max_batch)):
        checks.at_least(flag, value, 1)
    lengths = _prompt_lengths(args.prompt_tokens)
    thresholds = parse_thresholds(args.exit_thresholds, "--exit-thresholds", {})
    if thresholds and getattr(config, "model_type", None) != "recursive":
        raise UsageError(f"--exit-thresholds: {args.model} is not a recursive model (no exits)")
    if args.threads is not None:
        checks.at_least("--threads", args.threads, 1)
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        prompts = heldout_prompts(args.heldout, args.prompts, lengths, args.seed)
    except ValueError as e:
        raise UsageError(f"--heldout {e}") from None
    model = load_model_dir(args.model, "--model", dtype=dtype).to(device).eval()
    same = args.original is None or Path(args.original).resolve() == Path(args.model).resolve()
    original = None if same else load_model_dir(args.original, "--original", dtype=dtype).to(device).eval()
    try:
        result = measure_throughput(model, original, prompts, new_tokens=args.max_new_tokens, batch=args.max_batch,
                                    exit_thresholds=thresholds, exit_kv=args.exit_kv,
                                    same_memory=args.same_memory, same_model=same)
    except ValueError as e:  # the engine refuses the model (family, sharing)
        raise UsageError(f"--model {args.model}: {e}") from None
    result |= {"model": str(args.model), "original": str(args.original or args.model), "heldout": str(args.heldout)}
    atomic_write_json(args.out, result)
    print(f"written to {args.out}")


def simulate(args) -> None:
    for flag, path in (("--original", args.original), ("--model", args.model)):
        if path is not None:
            load_config_dir(path, flag)
            checks.check_weights(path, flag)
    checks.output_file(args.out, "--out")
    for flag, value, low in (("--prefix-tokens", args.prefix_tokens, 1), ("--new-tokens", args.new_tokens, 2),
                             ("--max-batch", args.max_batch, 1), ("--requests", args.requests, 1)):
        checks.at_least(flag, value, low)
    if args.memory_mb is not None and not args.memory_mb > 0:
        raise UsageError(f"--memory-mb must be > 0, got {args.memory_mb}")
    try:
        result = json.loads(Path(args.eval).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--eval {args.eval}: not a readable JSON file ({e.__class__.__name__})") from None
    thresholds = parse_thresholds(args.exit_thresholds, "--exit-thresholds", {})
    sets = list(((result.get("exits") or {}).get("ppl") or {}))
    heldout = args.heldout_set or (sets[0] if sets else None)
    try:
        settings = exits_from_eval(result, heldout, thresholds)
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
    memory = None if args.memory_mb is None else int(args.memory_mb * 2**20)
    try:
        out = simulate_throughput(model, original, settings, prefix=args.prefix_tokens, new_tokens=args.new_tokens,
                                  max_batch=args.max_batch, memory_bytes=memory, requests=args.requests,
                                  seed=args.seed)
    except ValueError as e:  # exits that do not fit the model, a budget below the weights, a refused model
        raise UsageError(f"--model {args.model}: {e}") from None
    out |= {"model_dir": str(args.model), "original_dir": str(args.original or args.model), "eval": str(args.eval),
            "heldout_set": heldout}
    atomic_write_json(args.out, out)
    print(f"written to {args.out}")
