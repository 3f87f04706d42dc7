"""Training memory and step time of a tied model (a DLT map) against the untied one (prints JSON).

Each case runs in its own process (a fresh peak): a random model of the chosen shape, made a
RecursiveForCausalLM with the given map, trained for a few AdamW steps on random tokens.
Reported per case: unique layers, trainable parameters, the bytes of what scales with them
(fp32 weights + gradients + AdamW's two moments: 16 bytes per parameter), the peak memory
(CUDA: torch.cuda.max_memory_allocated; CPU: the process's peak RSS, and its RSS before the
first step, so that the difference is what training added) and the median step time.

    python bench/dlt_memory.py [--shape tiny|smollm2] [--map "0 0 2 2 ..."] [--final DIR]
                               [--steps N] [--batch N] [--seq N] [--device cpu|cuda] > dlt_memory.json

The map is DLT's form (depth i -> first depth of its layer) or any labels; `--final` takes it
from a DLT run's final model (its config.json). Default: pairs of depths tied, [0 0 2 2 ...].
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import LlamaConfig  # noqa: E402

from rrt.model.modeling import RecursiveConfig, RecursiveForCausalLM  # noqa: E402
from rrt.model.sharing import canonical, unique_layers  # noqa: E402
from rrt.model.tying import trainable_params  # noqa: E402

SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                 num_key_value_heads=2),
    # SmolLM2-135M's shape (config of HuggingFaceTB/SmolLM2-135M), random weights
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(args, layer_map: list[int]) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    text = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=max(args.seq, 64))
    model = RecursiveForCausalLM(RecursiveConfig(text_config=text, layer_map=layer_map)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, text.vocab_size, (args.batch, args.seq), device=device)
    params = trainable_params(model)
    before = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_memory_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_rss"
    return {"layer_map": " ".join(map(str, canonical(model.config.layer_map))),
            "unique_layers": unique_layers(model.config.layer_map), "trainable_params": params,
            "weights_grads_adam_mb": round(16 * params / 2**20, 2), "memory_kind": kind,
            "memory_before_training_mb": round(before, 1), "peak_memory_mb": round(peak, 1),
            "training_added_mb": round(peak - before, 1),
            "step_time_s": round(statistics.median(times[1:] or times), 4), "steps": args.steps}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--map", default=None, help="the tied case's map, space-separated (DLT form or any labels)")
    ap.add_argument("--final", default=None, help="a DLT run's final model directory: its map")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case, in a child process
    args = ap.parse_args()
    layers = SHAPES[args.shape]["num_hidden_layers"]
    if args.case is not None:
        return run_case(args, [int(x) for x in args.case.split()])
    if args.final:
        with open(os.path.join(args.final, "config.json")) as f:
            tied = json.load(f)["layer_map"]
    elif args.map:
        tied = [int(x) for x in args.map.split()]
    else:
        tied = [d - d % 2 for d in range(layers)]
    if len(tied) != layers:
        raise SystemExit(f"--map has {len(tied)} depths, the {args.shape} shape has {layers}")
    cases = {}
    for name, layer_map in (("untied", list(range(layers))), ("tied", tied)):
        argv = [sys.executable, __file__, "--shape", args.shape, "--steps", str(args.steps), "--batch",
                str(args.batch), "--seq", str(args.seq), "--device", args.device, "--case", " ".join(map(str, layer_map))]
        child = subprocess.run(argv, capture_output=True, text=True, check=True)
        cases[name] = json.loads(child.stdout)
    ratio = cases["untied"]["training_added_mb"] / max(cases["tied"]["training_added_mb"], 1e-9)
    return {"shape": args.shape, "device": args.device, "batch": args.batch, "seq": args.seq,
            "threads": torch.get_num_threads(), **cases, "training_added_ratio_untied_over_tied": round(ratio, 2)}


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
