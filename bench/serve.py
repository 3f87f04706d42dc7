"""Serving throughput: transformers' `generate` against the depth-wise batching engine.

    .venv/bin/python bench/serve.py --base results/models/base/smollm2 \\
        --exit-model results/train/rec-stepwise-ee/final --heldout results/data/corpus/heldout_wiki.jsonl

One run, the same prompts for every setting (held-out documents cut to mixed lengths),
the same number of requests in flight (`--batch`), greedy, `--new` tokens each:
  hf_full            the full-size model, transformers' generate in static batches
  engine_full        the full-size model, our engine (B = 1: continuous sequence-wise batching)
  hf_recursive       the B=2 recursive model (stepwise), transformers' generate
  engine_recursive   the same, depth-wise batching, no exit
  engine_exit_model  the early-exit model (--exit-model, else the recursive one) depth-wise, no exit
  engine_exit_<t>    the early-exit model (--exit-model, else the recursive one) depth-wise,
                     exiting at max-prob >= t (KV of skipped depths propagated), per threshold
  engine_relaxed     relaxed (average + SVD, r=64) depth-wise
For each: tokens/s, the speed-up over hf_full, ms/token with one request, the memory it
holds (weights + KV cache as allocated), mean loops per token, and the share of tokens
equal to the same model's no-exit greedy tokens (up to its first difference). The
`simulated` entry predicts each exit setting's tokens/s the paper's way (the no-exit
engine's rate × B / mean loops) beside the measurement. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rrt.model.convert import convert  # noqa: E402
from rrt.serve.engine import DepthwiseEngine  # noqa: E402
from rrt.serve.hf import hf_generate  # noqa: E402


def prompts_from(path: str, tokenizer, count: int, lengths: tuple[int, int], seed: int) -> list[list[int]]:
    """`count` held-out documents, each cut to a length drawn in `lengths` (tokens)."""
    g = torch.Generator().manual_seed(seed)
    docs = [json.loads(line)["text"] for line in open(path)]
    out = []
    for text in docs:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g))
        if len(ids) >= n:
            out.append(ids[:n])
        if len(out) == count:
            return out
    raise SystemExit(f"{path}: fewer than {count} documents of {lengths[1]} tokens")


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def hf_cache_bytes(model, batch: int, length: int) -> int:
    text = model.config.get_text_config(decoder=True)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * batch * text.num_key_value_heads * length * head_dim * 4


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> float:
    """Share of tokens equal to the reference's, each sequence up to its first difference."""
    same = total = 0
    for a, b in zip(tokens, reference):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        same, total = same + n, total + len(b)
    return same / max(total, 1)


def run(name, model, prompts, args, engine: bool, reference=None, **engine_kwargs) -> dict:
    """Throughput of one setting over all prompts, and its batch-1 latency on the first."""
    length = max(map(len, prompts)) + args.new

    def generate(batch, ps, new):
        if not engine:
            return hf_generate(model, ps, new, batch_size=batch), None
        done = DepthwiseEngine(model, max_batch=batch, max_len=length, **engine_kwargs).generate(ps, new)
        return [r.tokens for r in done], [r.exit_loops for r in done]

    generate(args.batch, prompts[:2], 4)  # warm-up
    start = time.perf_counter()
    tokens, loops = generate(args.batch, prompts, args.new)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    generate(1, prompts[:1], args.latency_new)
    latency = (time.perf_counter() - start) / args.latency_new
    n = sum(map(len, tokens))
    loop_counts = [x for row in loops for x in row] if loops else []
    cache = (DepthwiseEngine(model, max_batch=args.batch, max_len=length, **engine_kwargs).cache.nbytes() if engine
             else hf_cache_bytes(model, args.batch, length))
    out = {"setting": name, "tokens": n, "seconds": round(seconds, 2), "tokens_per_s": round(n / seconds, 2),
           "ms_per_token_batch1": round(1000 * latency, 2), "memory_mb": round((weight_bytes(model) + cache) / 2**20),
           "mean_loops": round(sum(loop_counts) / len(loop_counts), 3) if loop_counts else None}
    if reference is not None:
        out["agreement_with_no_exit"] = round(agreement(tokens, reference), 4)
    print(json.dumps(out), flush=True)
    return out | {"_tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="full-size HF model directory (llama family)")
    parser.add_argument("--exit-model", default=None, help="early-exit-trained recursive model (default: converted)")
    parser.add_argument("--heldout", required=True, help='held-out JSON lines with "text" (prompt source)')
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--min-prompt", type=int, default=16)
    parser.add_argument("--max-prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--latency-new", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--thresholds", default="0.9,0.7,0.5,0.3")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    prompts = prompts_from(args.heldout, tokenizer, args.prompts, (args.min_prompt, args.max_prompt), args.seed)
    full = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    recursive = convert(full, loops=2, init="stepwise").eval()
    relaxed = convert(full, loops=2, init="average", rank=64).eval()
    exit_model = (AutoModelForCausalLM.from_pretrained(args.exit_model, dtype=torch.float32).eval()
                  if args.exit_model else recursive)
    results = [run("hf_full", full, prompts, args, engine=False),
               run("engine_full", full, prompts, args, engine=True),
               run("hf_recursive", recursive, prompts, args, engine=False),
               run("engine_recursive", recursive, prompts, args, engine=True)]
    no_exit = run("engine_exit_model", exit_model, prompts, args, engine=True)
    results.append(no_exit)
    for t in (float(x) for x in args.thresholds.split(",")):
        results.append(run(f"engine_exit_{t:g}", exit_model, prompts, args, engine=True,
                           reference=no_exit["_tokens"], exit_rule=("max_prob", t)))
    results.append(run("engine_relaxed", relaxed, prompts, args, engine=True))
    base_rate = results[0]["tokens_per_s"]
    for r in results:
        r.pop("_tokens")
        r["speedup_vs_hf_full"] = round(r["tokens_per_s"] / base_rate, 3)
    simulated = {r["setting"]: round(no_exit["tokens_per_s"] * 2 / r["mean_loops"], 2)
                 for r in results if r["setting"].startswith("engine_exit_") and r is not no_exit}
    print(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                  "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                                  "device": "cpu", "dtype": "float32"},
                      "settings": {k: v for k, v in vars(args).items()}, "results": results,
                      "simulated_tokens_per_s": simulated}, indent=1))


if __name__ == "__main__":
    main()
