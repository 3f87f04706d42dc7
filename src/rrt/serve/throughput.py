"""Measured serving throughput of one model against its full-size original, in one process
(speed is a ratio of rates taken side by side: the machines are noisy).

Settings, each timed over the same prompts after a warm-up:
  hf_original   the full-size original, transformers' `generate` in static batches: the
                denominator of every speed-up
  hf            the model itself through `generate` (left out when it is the original)
  depthwise     the model in the depth-wise batching engine, no exit
  exit          (early-exit models) the engine exiting at each confidence threshold, with
                the agreement of its tokens with the no-exit ones
Every engine setting also gets `heldout_ppl`: each prompt's second half scored given its
first, teacher-forced through the engine with that setting's exits and KV handling.

Every setting runs `batch` requests at a time, or, with `same_memory`, as many as fit in
the memory the original holds at `batch` (weights + KV): the paper's comparison at a
memory budget, where a recursive model's smaller weights buy it a larger batch.

Prompts are pieces of held-out documents (a token store, `rrt.data.shards`) of seeded
lengths, so prompts are never text the model was trained on.
"""
from __future__ import annotations

import math
import platform
import time

import numpy as np
import torch

from ..data.shards import store_documents
from ..settings import THROUGHPUT
from .engine import DepthwiseEngine
from .hf import hf_generate


def heldout_prompts(store, count: int, lengths: tuple[int, int], seed: int = 0) -> list[list[int]]:
    """`count` prompts from a held-out token store: consecutive pieces of its documents, in
    order, each of a length drawn from [lengths[0], lengths[1]] (a piece that would run past
    its document's end starts the next document instead)."""
    rng = np.random.default_rng(seed)
    draw = lambda: int(rng.integers(lengths[0], lengths[1] + 1))  # noqa: E731
    prompts, n = [], draw()
    for doc in store_documents(store):
        start = 0
        while start + n <= len(doc):
            prompts.append([int(t) for t in doc[start:start + n]])
            if len(prompts) == count:
                return prompts
            start, n = start + n, draw()
    raise ValueError(f"{store}: its documents hold {len(prompts)} prompts of {lengths[0]}-{lengths[1]} tokens, "
                     f"fewer than the {count} asked for")


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> float:
    """Share of the reference's tokens that `tokens` reproduces, each sequence counted up to
    its first difference (greedy decoding diverges for good after one)."""
    same = total = 0
    for a, b in zip(tokens, reference):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        same, total = same + n, total + len(b)
    return same / max(total, 1)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def hf_cache_bytes(model, batch: int, length: int) -> int:
    """The KV cache `generate` holds for `batch` sequences of `length` tokens."""
    text = model.config.get_text_config(decoder=True)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    dtype_bytes = next(model.parameters()).element_size()
    return 2 * text.num_hidden_layers * batch * kv_heads * length * head_dim * dtype_bytes


def memory_budget(model, batch: int, length: int) -> int:
    """Bytes `model` holds serving `batch` sequences of `length` tokens: its weights plus
    one KV cache entry per depth per token, as `generate` and the engine both hold it."""
    return weight_bytes(model) + hf_cache_bytes(model, batch, length)


def batch_within(model, budget_bytes: int, length: int, requests: int | None = None) -> int:
    """The most sequences of `length` tokens `model` can serve at once in `budget_bytes`
    (`memory_budget`), and never more than `requests` when given: the paper's "max batch"
    at a memory budget. A smaller model — a recursive one stores L/B layers — gets a larger
    batch from the same budget."""
    batch = (budget_bytes - weight_bytes(model)) // hf_cache_bytes(model, 1, length)
    if batch < 1:
        raise ValueError(f"{budget_bytes / 2**20:.1f} MB does not hold the model's weights and one sequence of "
                         f"{length} tokens")
    return int(batch if requests is None else min(batch, requests))


def generate_with(model, prompts, new_tokens: int, batch: int, engine: str, **engine_kwargs):
    """(tokens, exit loops or None) of `prompts` through `hf` or the `depthwise` engine."""
    if engine == "hf":
        return hf_generate(model, prompts, new_tokens, batch_size=batch), None
    length = max(map(len, prompts)) + new_tokens
    done = DepthwiseEngine(model, max_batch=batch, max_len=length, **engine_kwargs).generate(prompts, new_tokens)
    return [r.tokens for r in done], [r.exit_loops for r in done]


def _sync(model) -> None:
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()


def measure(name: str, model, prompts, new_tokens: int, batch: int, engine: str, *, reference=None,
            latency_tokens: int = 0, **engine_kwargs) -> dict:
    """Tokens/s of one setting over all prompts (after a warm-up on two short runs), mean
    loops per token, memory held (weights + KV cache as allocated), optionally ms/token with
    one request and agreement with `reference` tokens. `_tokens` holds the generated ids."""
    generate_with(model, prompts[:2], 2, batch, engine, **engine_kwargs)  # warm-up
    _sync(model)
    start = time.perf_counter()
    tokens, loops = generate_with(model, prompts, new_tokens, batch, engine, **engine_kwargs)
    _sync(model)
    seconds = time.perf_counter() - start
    generated = sum(map(len, tokens))
    length = max(map(len, prompts)) + new_tokens
    if engine == "hf":
        cache = hf_cache_bytes(model, batch, length)
    else:
        cache = DepthwiseEngine(model, max_batch=batch, max_len=length, **engine_kwargs).cache.nbytes()
    flat = [x for row in loops for x in row] if loops else []
    out = {"setting": name, "engine": engine, "tokens": generated, "seconds": round(seconds, 3),
           "tokens_per_s": round(generated / seconds, 2), "memory_mb": round((weight_bytes(model) + cache) / 2**20, 1),
           "mean_loops": round(sum(flat) / len(flat), 4) if flat else None}
    if latency_tokens:
        start = time.perf_counter()
        generate_with(model, prompts[:1], latency_tokens, 1, engine, **engine_kwargs)
        _sync(model)
        out["ms_per_token_batch1"] = round(1000 * (time.perf_counter() - start) / latency_tokens, 2)
    if reference is not None:
        out["agreement_with_no_exit"] = round(agreement(tokens, reference), 4)
    if engine == "depthwise":
        out["heldout_ppl"] = round(forced_perplexity(model, prompts, **engine_kwargs), 4)
    return out | {"_tokens": tokens}


def forced_perplexity(model, prompts: list[list[int]], **engine_kwargs) -> float:
    """Perplexity of each prompt's second half given its first, teacher-forced through the
    engine with its exit rule and KV mode (`DepthwiseEngine.score`): the quality of what an
    exit setting serves, on held-out text."""
    halves = [(p[:max(1, len(p) // 2)], p[max(1, len(p) // 2):]) for p in prompts if len(p) > 1]
    heads, tails = zip(*halves)
    length = max(map(len, prompts))
    done = DepthwiseEngine(model, max_batch=len(halves), max_len=length, **engine_kwargs).score(list(heads),
                                                                                              list(tails))
    nll = [x for r in done for x in r.nll]
    return math.exp(sum(nll) / len(nll))


def measure_throughput(model, original, prompts: list[list[int]], *, new_tokens: int = THROUGHPUT["max_new_tokens"],
                       batch: int = THROUGHPUT["max_batch"], exit_thresholds: dict[str, list[float]] | None = None,
                       exit_kv: str = THROUGHPUT["exit_kv"], same_memory: bool = THROUGHPUT["same_memory"],
                       same_model: bool = False, progress=print) -> dict:
    """Every setting of the module docstring for `model` against `original` (None or
    `same_model`: the model is the original). Each speed-up is over hf_original's tokens/s
    in this run. With `exit_thresholds` ({criterion: [T, ...]}), the engine exits at each.
    With `same_memory`, each setting's batch is the largest within the original's memory at
    `batch`."""
    results = []
    reference = model if same_model or original is None else original
    length = max(map(len, prompts)) + new_tokens
    budget = memory_budget(reference, batch, length)

    def run(name, m, engine, **kwargs):
        rows = batch_within(m, budget, length, len(prompts)) if same_memory else batch
        r = measure(name, m, prompts, new_tokens, rows, engine, **kwargs) | {"batch": rows}
        progress(f"{name}: {r['tokens_per_s']} tokens/s")
        results.append(r)
        return r

    run("hf_original", reference, "hf")
    if not same_model and original is not None:
        run("hf", model, "hf")
    no_exit = run("depthwise", model, "depthwise")
    for criterion, thresholds in (exit_thresholds or {}).items():
        for t in thresholds:
            r = run(f"exit_{criterion}_{t:g}", model, "depthwise", reference=no_exit["_tokens"],
                    exit_rule=(criterion, float(t)), exit_kv=exit_kv)
            r.update(criterion=criterion, threshold=float(t), exit_kv=exit_kv)
    base = results[0]["tokens_per_s"]
    for r in results:
        r.pop("_tokens")
        r["speedup"] = round(r["tokens_per_s"] / base, 4)
    param = next(model.parameters())
    return {"prompts": len(prompts), "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
            "new_tokens": new_tokens, "batch": batch, "same_memory": same_memory,
            "memory_budget_mb": round(budget / 2**20, 1),
            "machine": {"platform": platform.platform(), "device": str(param.device), "dtype": str(param.dtype),
                        "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
            "settings": results}
