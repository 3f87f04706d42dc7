"""Conversion benchmark on the embedded SmolLM2-135M (prints JSON).

1. Time of `stepwise` B=2 and `average` + SVD r=64 conversion (load + convert + save)
   against a plain load + save of the same model, as ratios measured in one run.
2. Held-out perplexity of the original model and of converted models before any
   uptraining: full rank (+ per-depth norms), r=64 and r=0, for each initialisation.

    python bench/convert.py [--workdir DIR] [--repeats N] [--ppl-tokens N] [--timing-only] > bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import rrt  # noqa: E402,F401
from rrt.data.corpus import build_corpus  # noqa: E402
from rrt.data.tokens import tokenize_corpus  # noqa: E402
from rrt.eval.perplexity import perplexity  # noqa: E402
from rrt.model.base_models import materialize  # noqa: E402
from rrt.model.convert import convert  # noqa: E402

INITS = ["stepwise", "average", "lower", "random"]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=None, help="keep models/data here (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ppl-tokens", type=int, default=4096, help="tokens per held-out set")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--timing-only", action="store_true", help="skip the perplexity part (2.)")
    args = ap.parse_args()
    hf_logging.disable_progress_bar()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rrt_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    base_dir = work / "smollm2-135m"
    if not base_dir.exists():
        materialize(base_dir)

    # 1. conversion time vs plain load + save, interleaved so drift hits all alike
    def plain():
        load(base_dir).save_pretrained(work / "out")

    def stepwise():
        convert(load(base_dir), loops=2, init="stepwise").save_pretrained(work / "out")

    def relaxed():
        convert(load(base_dir), loops=2, init="average", rank=64).save_pretrained(work / "out")

    times = {"load_save": [], "convert_stepwise_b2": [], "convert_average_svd_r64_b2": []}
    for _ in range(args.repeats):
        for name, fn in zip(times, (plain, stepwise, relaxed)):
            times[name].append(timed(fn))
            shutil.rmtree(work / "out")
    median = {k: statistics.median(v) for k, v in times.items()}
    timing = {
        "seconds_median": median,
        "ratio_vs_load_save": {k: median[k] / median["load_save"] for k in median if k != "load_save"},
        "repeats": args.repeats,
    }

    if args.timing_only:
        return {"model": "SmolLM2-135M-Instruct", "loops": 2, "threads": torch.get_num_threads(), "timing": timing}

    # 2. perplexity before uptraining
    corpus, tokens = work / "corpus", work / f"tokens_{args.block_size}_{args.ppl_tokens}"
    if not corpus.exists():
        build_corpus(corpus)
    if not tokens.exists():
        tokenize_corpus(corpus, base_dir, tokens, block_size=args.block_size, max_train_tokens=args.block_size,
                        heldout_max_tokens=args.ppl_tokens)
    sets = sorted(p.name[len("heldout_"):] for p in tokens.glob("heldout_*"))
    base = load(base_dir)

    def ppl(model):
        return {s: round(perplexity(model, tokens / f"heldout_{s}")["ppl"], 3) for s in sets}

    results = {"original": ppl(base)}
    for init in INITS:
        for label, kw in (("full", dict(rank="full", per_depth_norms=True)), ("r64", dict(rank=64)),
                          ("r0", dict(rank=0))):
            results[f"{init}_{label}"] = ppl(convert(base, loops=2, init=init, **kw).eval())
            print(f"{init}_{label}: {results[f'{init}_{label}']}", file=sys.stderr)

    return {"model": "SmolLM2-135M-Instruct", "loops": 2, "threads": torch.get_num_threads(),
            "timing": timing, "perplexity_before_uptraining": results,
            "ppl_tokens_per_set": args.ppl_tokens, "block_size": args.block_size}


if __name__ == "__main__":
    # stdout carries only the JSON: libraries imported on the way (DeepSpeed's accelerator
    # probe) log to stdout, so everything before the result goes to stderr
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        result = main()
    print(json.dumps(result, indent=1))
