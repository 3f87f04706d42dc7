"""Serving throughput: transformers' `generate` against the depth-wise batching engine.

    .venv/bin/python bench/serve.py --base results/models/base/smollm2 \\
        --exit-model results/train/rec-stepwise-ee/final --heldout results/data/corpus/heldout_wiki.jsonl
    python bench/serve.py --shapes google/gemma-2b --device cuda     # the paper's shapes, random weights, bf16

One run, the same prompts for every setting (held-out documents cut to mixed lengths; with
--shapes, random ids of the same lengths), the same number of requests in flight
(`--batch`; with --same-memory, each setting's largest batch within the memory hf_full
holds at --batch: the paper's max batch, where a recursive model's smaller weights buy
it more sequences), greedy, `--new` tokens each:
  hf_full            the full-size model, transformers' generate in static batches
  engine_full        the full-size model, our engine (B = 1: continuous sequence-wise batching)
  hf_recursive       the B=2 recursive model (stepwise), transformers' generate
  engine_recursive   the same, depth-wise batching, no exit
  engine_exit_model  the early-exit model (--exit-model, else the recursive one) depth-wise, no exit
  engine_exit_<t>_<kv>  the same exiting at max-prob >= t, the KV of skipped depths
                     propagated or filled by the token continuing (--exit-kv), per threshold
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rrt.model.convert import convert  # noqa: E402
from rrt.model.shapes import HUB_SHAPES, shape_config  # noqa: E402
from rrt.serve.throughput import batch_within, measure, memory_budget  # noqa: E402


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


def random_prompts(vocab: int, count: int, lengths: tuple[int, int], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(count)]


def run(name, model, prompts, args, engine: bool, reference=None, **engine_kwargs) -> dict:
    """Throughput of one setting over all prompts, and its batch-1 latency on the first."""
    batch = batch_within(model, args.budget, args.length, len(prompts)) if args.same_memory else args.batch
    out = measure(name, model, prompts, args.new, batch, "depthwise" if engine else "hf", reference=reference,
                  latency_tokens=args.latency_new, **engine_kwargs) | {"batch": batch}
    print(json.dumps({k: v for k, v in out.items() if k != "_tokens"}), flush=True)
    return out


def models(args, device, dtype):
    """(tokenizer or None, full, recursive, relaxed, exit model) on `device` in `dtype`."""
    if args.shapes:
        with torch.device(device):
            full = AutoModelForCausalLM.from_config(shape_config(HUB_SHAPES[args.shapes]), dtype=dtype)
        tokenizer = None
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.base)
        full = AutoModelForCausalLM.from_pretrained(args.base, dtype=dtype).to(device)
    full.eval()
    recursive = convert(full, loops=2, init="stepwise").eval()
    relaxed = convert(full, loops=2, init="average", rank=64).eval()
    exit_model = (AutoModelForCausalLM.from_pretrained(args.exit_model, dtype=dtype).to(device).eval()
                  if args.exit_model else recursive)
    return tokenizer, full, recursive, relaxed, exit_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--base", help="full-size HF model directory (its tokenizer cuts the --heldout prompts)")
    source.add_argument("--shapes", choices=list(HUB_SHAPES),
                        help="a paper model's architecture with random weights (speed only: random prompt ids)")
    parser.add_argument("--exit-model", default=None, help="early-exit-trained recursive model (default: converted)")
    parser.add_argument("--heldout", default=None, help='held-out JSON lines with "text" (prompt source, with --base)')
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--min-prompt", type=int, default=16)
    parser.add_argument("--max-prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--latency-new", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--same-memory", action="store_true",
                        help="each setting runs at its largest batch within hf_full's memory at --batch")
    parser.add_argument("--thresholds", default="0.9,0.7,0.5,0.3")
    parser.add_argument("--exit-kv", default="propagate", help="comma-separated: propagate, continue")
    parser.add_argument("--device", default="auto", help="auto (cuda if there is one), cpu, cuda")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="auto: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.base and not args.heldout:
        parser.error("--base needs --heldout")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = getattr(torch, args.dtype if args.dtype != "auto" else "bfloat16" if device == "cuda" else "float32")
    tokenizer, full, recursive, relaxed, exit_model = models(args, device, dtype)
    lengths = (args.min_prompt, args.max_prompt)
    prompts = (prompts_from(args.heldout, tokenizer, args.prompts, lengths, args.seed) if tokenizer
               else random_prompts(full.config.vocab_size, args.prompts, lengths, args.seed))
    args.length = max(map(len, prompts)) + args.new  # as `measure` sizes each setting's cache
    args.budget = memory_budget(full, args.batch, args.length)
    results = [run("hf_full", full, prompts, args, engine=False),
               run("engine_full", full, prompts, args, engine=True),
               run("hf_recursive", recursive, prompts, args, engine=False),
               run("engine_recursive", recursive, prompts, args, engine=True)]
    no_exit = run("engine_exit_model", exit_model, prompts, args, engine=True)
    results.append(no_exit)
    for kv in args.exit_kv.split(","):
        for t in (float(x) for x in args.thresholds.split(",")):
            results.append(run(f"engine_exit_{t:g}_{kv}", exit_model, prompts, args, engine=True,
                               reference=no_exit["_tokens"], exit_rule=("max_prob", t), exit_kv=kv))
    results.append(run("engine_relaxed", relaxed, prompts, args, engine=True))
    base_rate = results[0]["tokens_per_s"]
    for r in results:
        r.pop("_tokens")
        r["speedup_vs_hf_full"] = round(r["tokens_per_s"] / base_rate, 3)
    simulated = {r["setting"]: round(no_exit["tokens_per_s"] * 2 / r["mean_loops"], 2)
                 for r in results if r["setting"].startswith("engine_exit_") and r is not no_exit}
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    print(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                  "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                                  "device": device, "gpu": gpu, "dtype": str(dtype).replace("torch.", "")},
                      "settings": {k: v for k, v in vars(args).items()}, "results": results,
                      "simulated_tokens_per_s": simulated}, indent=1))


if __name__ == "__main__":
    main()
