"""Handler of `rrt generate`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..errors import UsageError
from ..io import atomic_write_text
from ..model.load import load_config_dir, load_model_dir
from ..serve.engine import DepthwiseEngine
from ..serve.hf import hf_generate
from ..settings import EXIT_CRITERIA
from . import checks


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
