"""Tokens made by the model's own tokenizer (`rrt eval`, `rrt train`): a module of its own
because it loads transformers, which `rrt.cli.checks` (used by `rrt launch`) must not."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

from transformers import AutoTokenizer

from ..data.blocks import recorded_tokenizer
from ..data.tokenizer import tokenizer_fingerprint
from ..errors import UsageError
from ..model.load import has_tokenizer


@functools.lru_cache(maxsize=8)
def _model_fingerprint(model_dir: str) -> str | None:
    if not has_tokenizer(model_dir):
        return None
    return tokenizer_fingerprint(AutoTokenizer.from_pretrained(model_dir))


def same_tokenizer(model_dir: str | Path, model_flag: str, data_dir: str | Path, data_label: str) -> None:
    """Tokens written by `rrt tokenize` are refused (one line naming both tokenizers) when
    the model's tokenizer is not the one that made them, by fingerprint
    (`rrt.data.tokenizer.tokenizer_fingerprint`), not only by vocabulary size: another
    tokenizer's ids still index the embeddings and give numbers, wrong ones. Tokens that
    record no fingerprint (written before it was recorded), or a model without a tokenizer,
    are not checked: a one-line warning says so. Other datasets record none: not checked.
    `data_label` names the tokens in messages (e.g. "--data DIR")."""
    recorded = recorded_tokenizer(data_dir)
    if recorded is None:
        return
    theirs, ours = recorded.get("fingerprint"), _model_fingerprint(str(model_dir))
    if theirs is None or ours is None:
        why = (f"{data_label} records no tokenizer fingerprint (tokenized before it was recorded)"
               if theirs is None else f"{model_flag} {model_dir} has no tokenizer")
        print(f"warning: {why}: its tokens are not checked against {model_flag}'s tokenizer", file=sys.stderr)
        return
    if theirs != ours:
        raise UsageError(f"{data_label} was tokenized by {recorded.get('name', '?')} ({theirs[:19]}…), "
                         f"not by {model_flag} {model_dir}'s tokenizer ({ours[:19]}…): retokenize with it, or "
                         "give the model that goes with these tokens")
