"""The paper's throughput procedure (Sec. 5, App. on continuous depth-wise batching):
measure how long one decoding step takes at each batch size, then *simulate* serving a
set of requests under three schedulers from those times and each token's exit loop.

Measurement (`decode_costs`): dummy prompts (seeded random ids, as the paper's dummy
inputs) of `prefix` tokens, `batch` at once, decoded `new_tokens` greedy tokens in the
depth-wise engine without exits, so all rows move in lockstep and each engine step is one
loop block (the K shared layers) over `batch` rows; a plain model is one block of all its
layers. The block time is the mean of the engine's (N - 1) · loops decoding steps, each
timed (the prefill and the first token are not). Batch sizes 1, 2, 4, ... up to the largest that
fits a memory budget (weights + KV cache, `rrt.serve.throughput.batch_within`) or a cap.

Simulation: a request is the list of its tokens' exit loops (1..loops; a plain model's
tokens all "exit" at loop 1 of 1). A step's cost is the measured block time at its number
of rows (linear between measured batch sizes). At most `max_batch` requests in flight.
  vanilla        static batches of max_batch requests in arrival order; every step runs
                 all loops over the whole batch, which waits for its longest request
  sequence-wise  continuous batching: a finished request's slot is refilled at once; every
                 step still runs all loops (a token cannot leave its batch early)
  depth-wise     continuous depth-wise batching: every step is one block pass over the rows
                 in flight, each at its own loop; a token leaves at its exit loop and its
                 request's next token enters at loop 1 in the next step
Prefill is not simulated (the paper costs decoding only), nor the KV an exited token
leaves unfilled at deeper loops (the paper names it an open problem).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from .engine import DepthwiseEngine
from .throughput import _sync, batch_within


@dataclass
class StepCosts:
    """Measured ms of one block pass (one loop of the shared layers; a plain model: its
    whole depth) at each measured batch size; `loops` blocks make a full-depth step."""
    batches: list[int]
    block_ms: list[float]
    loops: int

    @property
    def max_batch(self) -> int:
        return self.batches[-1]

    def step_ms(self, rows: int) -> float:
        """One block pass over `rows` rows, linear between the measured batch sizes."""
        if not 1 <= rows <= self.max_batch:
            raise ValueError(f"{rows} rows is outside the measured batch sizes 1..{self.max_batch}")
        return float(np.interp(rows, self.batches, self.block_ms))


@dataclass
class Served:
    tokens: int
    ms: float
    steps: int

    @property
    def tokens_per_s(self) -> float:
        return 1000 * self.tokens / self.ms


def vanilla(requests: list[list[int]], costs: StepCosts) -> Served:
    """Static batches: each runs max(len) full-depth steps at its size."""
    ms, steps = 0.0, 0
    for start in range(0, len(requests), costs.max_batch):
        batch = requests[start:start + costs.max_batch]
        longest = max(map(len, batch))
        ms += longest * costs.loops * costs.step_ms(len(batch))
        steps += longest * costs.loops
    return Served(sum(map(len, requests)), ms, steps)


def sequence_wise(requests: list[list[int]], costs: StepCosts) -> Served:
    """Continuous batching by sequence: each step, every request in flight gets one token
    through every loop; finished requests are replaced before the next step."""
    waiting, left = deque(map(len, requests)), []
    ms, steps = 0.0, 0
    while waiting or left:
        while waiting and len(left) < costs.max_batch:
            left.append(waiting.popleft())
        ms += costs.loops * costs.step_ms(len(left))
        steps += costs.loops
        left = [n - 1 for n in left if n > 1]
    return Served(sum(map(len, requests)), ms, steps)


def depth_wise(requests: list[list[int]], costs: StepCosts) -> Served:
    """Continuous depth-wise batching: each step is one block pass over every request's
    in-flight token, each at its own loop. A row is [exit loops, next token, loops run]."""
    waiting, rows = deque(requests), []
    ms, steps = 0.0, 0
    while waiting or rows:
        while waiting and len(rows) < costs.max_batch:
            rows.append([waiting.popleft(), 0, 0])
        ms += costs.step_ms(len(rows))
        steps += 1
        for row in rows:
            exits, token, _ = row
            row[2] += 1
            if row[2] >= exits[token]:  # the token leaves; the next one starts at loop 1
                row[1], row[2] = token + 1, 0
        rows = [r for r in rows if r[1] < len(r[0])]
    return Served(sum(map(len, requests)), ms, steps)


SCHEDULERS = {"vanilla": vanilla, "sequence_wise": sequence_wise, "depth_wise": depth_wise}


def draw_requests(count: int, max_tokens: int, exit_at: list[float], seed: int = 0) -> list[list[int]]:
    """`count` requests of uniform(1, max_tokens) tokens (seeded), each token's exit loop an
    independent draw from `exit_at` (fractions leaving at loops 1..B). The lengths depend on
    the seed only, so models given the same seed serve the same requests."""
    lengths = np.random.default_rng(seed).integers(1, max_tokens + 1, count)
    draws = np.random.default_rng(seed + 1)
    p = np.asarray(exit_at, dtype=float)
    return [(draws.choice(len(p), size=n, p=p / p.sum()) + 1).tolist() for n in lengths]


def simulate(requests: list[list[int]], costs: StepCosts) -> dict:
    """{scheduler: tokens/s} of the same requests under every scheduler."""
    return {name: round(schedule(requests, costs).tokens_per_s, 3) for name, schedule in SCHEDULERS.items()}


# --- measurement ------------------------------------------------------------------------
def _loops(model) -> int:
    return model.config.num_loops if model.config.model_type == "recursive" else 1


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... below max_batch, then max_batch."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return sizes + [max_batch]


def _decode_steps(model, prompts: list[list[int]], new_tokens: int) -> list[float]:
    """Seconds of each engine step while the prompts decode together (their prefill and first
    token untimed): every step is one loop block over all of them."""
    engine = DepthwiseEngine(model, max_batch=len(prompts), max_len=len(prompts[0]) + new_tokens)
    step, spent = engine._step, []

    def timed(rows):
        _sync(model)
        start = time.perf_counter()
        out = step(rows)
        _sync(model)
        spent.append(time.perf_counter() - start)
        return out

    engine._step = timed  # this engine only: it times what `generate` does, changing nothing
    engine.generate(prompts, new_tokens)
    return spent


def block_ms(model, batch: int, prefix: int, new_tokens: int, seed: int = 0) -> float:
    """Mean ms of one engine step (one loop block over `batch` rows) decoding dummy prompts."""
    if new_tokens < 2:
        raise ValueError("timing a decoding step needs new_tokens >= 2")
    vocab = model.get_input_embeddings().num_embeddings
    prompts = np.random.default_rng(seed).integers(0, vocab, (batch, prefix)).tolist()
    loops = _loops(model)
    _decode_steps(model, prompts, min(new_tokens, 4))  # warm-up: the first steps at a new shape are slow
    steps = _decode_steps(model, prompts, new_tokens)
    if len(steps) != (new_tokens - 1) * loops:
        raise RuntimeError(f"{len(steps)} engine steps for {new_tokens - 1} tokens of {loops} loops: the rows did "
                           "not move in lockstep")
    return 1000 * sum(steps) / len(steps)


def decode_costs(model, *, prefix: int, new_tokens: int, max_batch: int, memory_bytes: int | None = None,
                 seed: int = 0, progress=print) -> tuple[StepCosts, dict]:
    """StepCosts of `model` at batch sizes up to the largest within `memory_bytes` (weights +
    KV cache of prefix + new_tokens tokens) and `max_batch`; and a JSON-ready record."""
    cap = max_batch if memory_bytes is None else batch_within(model, memory_bytes, prefix + new_tokens, max_batch)
    loops = _loops(model)
    sizes, times = batch_sizes(cap), []
    for b in sizes:
        times.append(block_ms(model, b, prefix, new_tokens, seed))
        progress(f"batch {b}: {times[-1]:.2f} ms per block, {times[-1] * loops / b:.3f} ms per token")
    costs = StepCosts(sizes, times, loops)
    record = {"loops": loops, "max_batch": cap, "batches": sizes, "block_ms": [round(t, 4) for t in times],
              "ms_per_token": [round(t * loops / b, 4) for b, t in zip(sizes, times)],
              "ms_per_token_batch1": round(times[0] * loops, 4)}
    return costs, record


def _monotone(times: list[float]) -> list[float]:
    """Never let a larger batch cost less than a smaller one (timer noise at tiny sizes)."""
    return [max(times[:i + 1]) for i in range(len(times))]


def exits_from_eval(result: dict, heldout: str, thresholds: dict[str, list[float]]) -> list[dict]:
    """The exit settings of one eval JSON: "none" (every token runs every loop, `exit_at`
    None; the model's own accuracy), "oracle" (the first loop whose argmax equals the final
    one's, on held-out set `heldout`; the model's accuracy: it serves the final tokens), and
    each threshold in `thresholds` that the held-out set was also scored at (its exit
    distribution there; its accuracy from the task rerun at that threshold, if any)."""
    acc = result.get("acc_avg")
    settings = [{"exit": "none", "exit_at": None, "acc_avg": acc}]  # None: every token at the last loop
    exits = result.get("exits")
    if not exits:
        return settings
    if heldout not in exits["ppl"]:
        raise ValueError(f"held-out set {heldout!r} was not evaluated at every exit (sets: "
                         f"{', '.join(exits['ppl'])})")
    per_set = exits["ppl"][heldout]
    settings.append({"exit": "oracle", "exit_at": per_set["oracle"]["exit_at"], "acc_avg": acc})
    for criterion, ts in thresholds.items():
        scored = {e["threshold"]: e for e in (per_set.get("thresholds") or {}).get(criterion, [])}
        tasks = {e["threshold"]: e for e in (exits.get("task_thresholds") or {}).get(criterion, [])}
        for t in ts:
            match = next((k for k in scored if np.isclose(k, t)), None)
            if match is None:
                continue
            task = next((e for k, e in tasks.items() if np.isclose(k, t)), {})
            settings.append({"exit": f"{criterion}:{t:g}", "exit_at": scored[match]["exit_at"],
                             "acc_avg": task.get("acc_avg")})
    return settings


def simulate_throughput(model, original, settings: list[dict], *, prefix: int, new_tokens: int, max_batch: int,
                        memory_bytes: int | None, requests: int, seed: int = 0, progress=print) -> dict:
    """The whole procedure for `model` beside its full-size `original` (None: the model is
    the original): both measured in this process, the same requests served by both, the
    original's tokens all at full depth; every speed-up over the original's vanilla and
    sequence-wise rates of this run."""
    progress("original:" if original is not None else "model (its own original):")
    reference_costs, reference = decode_costs(original if original is not None else model, prefix=prefix,
                                              new_tokens=new_tokens, max_batch=max_batch, memory_bytes=memory_bytes,
                                              seed=seed, progress=progress)
    if original is None:
        costs, measured = reference_costs, reference
    else:
        progress("model:")
        costs, measured = decode_costs(model, prefix=prefix, new_tokens=new_tokens, max_batch=max_batch,
                                       memory_bytes=memory_bytes, seed=seed, progress=progress)
    reference_costs = StepCosts(reference_costs.batches, _monotone(reference_costs.block_ms), reference_costs.loops)
    costs = StepCosts(costs.batches, _monotone(costs.block_ms), costs.loops)
    base = simulate(draw_requests(requests, new_tokens, [1.0], seed), reference_costs)
    rows = []
    for s in settings:
        s = {**s, "exit_at": s["exit_at"] or [0.0] * (costs.loops - 1) + [1.0]}
        if len(s["exit_at"]) != costs.loops:
            raise ValueError(f"exit {s['exit']}: {len(s['exit_at'])} exits for a model of {costs.loops} loops")
        rates = simulate(draw_requests(requests, new_tokens, s["exit_at"], seed), costs)
        mean_loops = sum((b + 1) * f for b, f in enumerate(s["exit_at"]))
        rows.append({**s, "mean_loops": round(mean_loops, 4), **{f"{k}_tokens_per_s": v for k, v in rates.items()},
                     "x_vanilla": round(rates["depth_wise"] / base["vanilla"], 4),
                     "x_sequence_wise": round(rates["depth_wise"] / base["sequence_wise"], 4)})
        progress(f"{s['exit']}: depth-wise {rates['depth_wise']:.1f} tokens/s, x{rows[-1]['x_vanilla']:.2f} vanilla, "
                 f"x{rows[-1]['x_sequence_wise']:.2f} sequence-wise")
    param = next(model.parameters())
    return {"prefix": prefix, "new_tokens": new_tokens, "requests": requests, "seed": seed,
            "memory_budget_mb": None if memory_bytes is None else round(memory_bytes / 2**20, 1),
            "device": str(param.device), "dtype": str(param.dtype).replace("torch.", ""),
            "torch_threads": torch.get_num_threads(),
            "original": {**reference, **{f"{k}_tokens_per_s": v for k, v in base.items()}},
            "model": measured, "settings": rows}
