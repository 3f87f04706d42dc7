"""Held-out perplexity: exp of the token-weighted mean NLL over packed blocks (the
`rrt tokenize` output)."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from datasets import load_from_disk
from tqdm.auto import tqdm

from ..data.blocks import TokenBlocks, is_block_dir
from ..model.exits import exit_hidden_states, exit_logits
from .exit_rates import ExitTally


def open_blocks(dataset_dir):
    """Equal-length blocks, each {"input_ids": LongTensor}: a split directory written by
    `rrt tokenize` (`rrt.data.blocks`) or a `datasets` directory with an input_ids column."""
    if is_block_dir(dataset_dir):
        blocks = TokenBlocks(dataset_dir)
    else:
        blocks = load_from_disk(str(dataset_dir))
        if "input_ids" not in blocks.column_names:
            raise ValueError(f"{dataset_dir} has no input_ids column (columns: {blocks.column_names})")
        blocks = blocks.with_format("torch", columns=["input_ids"])
    if len(blocks) == 0:
        raise ValueError(f"{dataset_dir} has no blocks")
    return blocks


def _batches(blocks, batch_size: int, device, desc: str):
    """(rows, block) LongTensors of consecutive blocks on `device`, with a progress bar."""
    for start in tqdm(range(0, len(blocks), batch_size), desc=desc):
        rows = range(start, min(start + batch_size, len(blocks)))
        yield torch.stack([blocks[i]["input_ids"] for i in rows]).to(device)


def _nll_sum(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Summed NLL of each block's tokens 1..n-1, row by row in fp32, so that only one row's
    logits are ever upcast (a 256k vocabulary at 2048 tokens is 2 GB per row)."""
    return sum(torch.nn.functional.cross_entropy(row_logits[:-1].float(), row_ids[1:], reduction="sum").item()
               for row_logits, row_ids in zip(logits, ids))


def _result(total_nll: float, total_tokens: int) -> dict:
    mean = total_nll / total_tokens
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tokens}


@torch.inference_mode()
def perplexity(model, dataset_dir, batch_size: int = 8) -> dict:
    """{"ppl", "nll", "tokens"} over a saved dataset of equal-length blocks (`input_ids`).

    Each block predicts its tokens 1..n-1 from their prefix; the mean is over all predicted
    tokens of all blocks (`_nll_sum`)."""
    blocks = open_blocks(dataset_dir)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for ids in _batches(blocks, batch_size, device, f"perplexity {Path(dataset_dir).name}"):
        total_nll += _nll_sum(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, ids)
        total_tokens += ids[:, 1:].numel()
    model.train(was_training)
    return _result(total_nll, total_tokens)


@torch.inference_mode()
def perplexities(model, dataset_dir, batch_size: int = 8,
                 thresholds: dict[str, list[float]] | None = None) -> tuple[dict, dict]:
    """(`perplexity`, `exit_perplexity`) from one forward pass per batch instead of two:
    the last exit's logits of the whole batch are the model's own (bit for bit), so the
    first is `perplexity`'s result exactly."""
    blocks = open_blocks(dataset_dir)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tally = ExitTally(thresholds)
    total_nll, total_tokens = 0.0, 0
    for ids in _batches(blocks, batch_size, device, f"exit perplexity {Path(dataset_dir).name}"):
        hidden = exit_hidden_states(model, ids, torch.ones_like(ids))
        total_nll += _nll_sum(exit_logits(model, hidden[-1]), ids)
        total_tokens += ids[:, 1:].numel()
        for row in range(ids.shape[0]):
            tally.add([exit_logits(model, h[row, :-1]) for h in hidden], ids[row, 1:])
    model.train(was_training)
    return _result(total_nll, total_tokens), tally.result()


def exit_perplexity(model, dataset_dir, batch_size: int = 8, thresholds: dict[str, list[float]] | None = None) -> dict:
    """Held-out perplexity and next-token accuracy at every loop's exit
    (`rrt.model.exits`), the oracle exit rates and, per confidence threshold
    ({criterion: [t, ...]}), the numbers of the exited predictions: `ExitTally.result`.
    The last exit's perplexity is `perplexity`'s. Row by row in fp32 as there."""
    return perplexities(model, dataset_dir, batch_size, thresholds)[1]
