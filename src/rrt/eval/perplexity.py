"""Held-out perplexity: exp of the token-weighted mean NLL over packed blocks (the
`rrt tokenize` output).

Blocks are cut from the token stream, so most start mid-document without the <bos> a
Gemma or Llama tokenizer starts every document with (issue 21 measured a Gemma 3 270M at
213.8 on such 256-token blocks without it and 50.0 with it). With `prefix_token` (the tokenizer's,
`rrt.data.tokenizer.prefix_token`) each block is conditioned on it without scoring it, as
lm-eval's rolling log-likelihood does with its prefix token: the scored tokens (1..n-1 of
each block) and their count are the same either way. A block that already starts with it
is scored as it is. Without one (SmolLM2, GPT-NeoX) blocks are scored as they are."""
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


def _conditioned(ids: torch.Tensor, prefix_token: int | None):
    """The batch as (inputs, offset, blocks) groups: blocks that need the prefix token get
    it in front (their logits then start one position later, `offset` 1), the others are
    fed as they are (offset 0)."""
    if prefix_token is None:
        return [(ids, 0, ids)]
    has = ids[:, 0] == prefix_token
    groups = []
    if not has.all():
        rows = ids[~has]
        groups.append((torch.cat([torch.full_like(rows[:, :1], prefix_token), rows], dim=1), 1, rows))
    if has.any():
        groups.append((ids[has], 0, ids[has]))
    return groups


def _nll_sum(logits: torch.Tensor, ids: torch.Tensor, offset: int = 0) -> float:
    """Summed NLL of each block's tokens 1..n-1 (predicted by the logits from position
    `offset` on), row by row in fp32, so that only one row's logits are ever upcast (a
    256k vocabulary at 2048 tokens is 2 GB per row)."""
    return sum(torch.nn.functional.cross_entropy(row_logits[offset:-1].float(), row_ids[1:], reduction="sum").item()
               for row_logits, row_ids in zip(logits, ids))


def _result(total_nll: float, total_tokens: int) -> dict:
    mean = total_nll / total_tokens
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tokens}


@torch.inference_mode()
def perplexity(model, dataset_dir, batch_size: int = 8, prefix_token: int | None = None) -> dict:
    """{"ppl", "nll", "tokens"} over a saved dataset of equal-length blocks (`input_ids`).

    Each block predicts its tokens 1..n-1 from their prefix (after `prefix_token`, when
    given: module docstring); the mean is over all predicted tokens of all blocks (`_nll_sum`)."""
    blocks = open_blocks(dataset_dir)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for ids in _batches(blocks, batch_size, device, f"perplexity {Path(dataset_dir).name}"):
        for inputs, offset, rows in _conditioned(ids, prefix_token):
            total_nll += _nll_sum(model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits, rows, offset)
        total_tokens += ids[:, 1:].numel()
    model.train(was_training)
    return _result(total_nll, total_tokens)


@torch.inference_mode()
def perplexities(model, dataset_dir, batch_size: int = 8, thresholds: dict[str, list[float]] | None = None,
                 prefix_token: int | None = None) -> tuple[dict, dict]:
    """(`perplexity`, `exit_perplexity`) from one forward pass per batch instead of two:
    the last exit's logits of the whole batch are the model's own (bit for bit), so the
    first is `perplexity`'s result exactly. Every exit scores the same tokens, conditioned
    on `prefix_token` alike."""
    blocks = open_blocks(dataset_dir)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tally = ExitTally(thresholds)
    total_nll, total_tokens = 0.0, 0
    for ids in _batches(blocks, batch_size, device, f"exit perplexity {Path(dataset_dir).name}"):
        for inputs, offset, rows in _conditioned(ids, prefix_token):
            hidden = exit_hidden_states(model, inputs, torch.ones_like(inputs))
            total_nll += _nll_sum(exit_logits(model, hidden[-1]), rows, offset)
            for row in range(rows.shape[0]):
                tally.add([exit_logits(model, h[row, offset:-1]) for h in hidden], rows[row, 1:])
        total_tokens += ids[:, 1:].numel()
    model.train(was_training)
    return _result(total_nll, total_tokens), tally.result()


def exit_perplexity(model, dataset_dir, batch_size: int = 8, thresholds: dict[str, list[float]] | None = None,
                    prefix_token: int | None = None) -> dict:
    """Held-out perplexity and next-token accuracy at every loop's exit
    (`rrt.model.exits`), the oracle exit rates and, per confidence threshold
    ({criterion: [t, ...]}), the numbers of the exited predictions: `ExitTally.result`.
    The last exit's perplexity is `perplexity`'s. Row by row in fp32 as there."""
    return perplexities(model, dataset_dir, batch_size, thresholds, prefix_token)[1]
