"""Documents to token ids: the document separator, the id dtype, batched encoding."""
from __future__ import annotations

import hashlib
import json

import numpy as np
from transformers import AutoTokenizer

# Pretraining end-of-text tokens, tried before the tokenizer's eos: an instruct tokenizer's
# eos ends a chat turn (SmolLM2-Instruct: <|im_end|>), not a document.
END_OF_TEXT_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "<eos>", "</s>")
TOKENIZE_BATCH = 512  # documents per call into the Rust tokenizer


# --- tokenizing -------------------------------------------------------------------------
def document_separator(tokenizer) -> int:
    """Id of the token appended after every document.

    The pretraining end-of-text token when the tokenizer has one as a special token, else
    the eos token. For the embedded SmolLM2-135M-Instruct tokenizer this is <|endoftext|>
    (id 0), SmolLM2's pretraining separator, not its eos <|im_end|> (id 2): measured on
    BoolQ passages packed into 256-token blocks, the model's mean NLL is 3.146 with
    <|endoftext|> against 3.219 with <|im_end|>, which makes the first token of the next
    document far less predictable (NLL 6.6 against 15.3). For base tokenizers (SmolLM2,
    GPT-NeoX, Gemma, Llama) this is their eos token anyway."""
    special = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {}))
    for token in END_OF_TEXT_TOKENS:
        if token in special:
            return tokenizer.convert_tokens_to_ids(token)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-text or eos token to separate documents")
    return tokenizer.eos_token_id


def prefix_token(tokenizer) -> int | None:
    """The token the tokenizer puts before every text when it adds special tokens: its
    <bos> for Gemma's and Llama's tokenizers (so every training document starts with it,
    `DocumentTokenizer`), None for SmolLM2's and GPT-NeoX's, which add none. The one place
    that says whether a model is used with a <bos>: perplexity conditions each held-out
    block on it (`rrt.eval.perplexity`)."""
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return ids[0] if ids and ids[0] == tokenizer.bos_token_id else None


def tokenizer_fingerprint(tokenizer) -> str:
    """"sha256:<hex>" of what maps text to ids: the backend tokenizer's model (vocabulary
    with its merges or scores, unknown token, byte fallback) and its added tokens (id,
    content, special), serialised canonically. Two tokenizers with the same vocabulary size
    but other tokens differ; saving and reloading one does not change it (its truncation,
    padding and decoder are not part of it). Recorded in every token store's manifest
    (`DocumentTokenizer.describe`), so a model is never fed another tokenizer's ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        model = dict(state["model"])
        if isinstance(model.get("merges"), list):  # "a b" (older tokenizers) and ["a", "b"] alike
            model["merges"] = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model["merges"]]
        added = sorted((t["id"], t["content"], bool(t.get("special"))) for t in state.get("added_tokens", []))
    else:  # a tokenizer without a Rust backend: its vocabulary and added tokens
        model = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])}
        added = sorted((i, str(t), True) for t, i in getattr(tokenizer, "added_tokens_encoder", {}).items())
    text = json.dumps({"model": model, "added_tokens": added}, sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def token_dtype(vocab_size: int):
    """uint16 when every id fits (SmolLM2 49k, Llama 32k, GPT-NeoX 50k), else uint32 (Gemma 256k)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class DocumentTokenizer:
    """Token ids of documents, separator appended, through the Rust tokenizer's batch call
    (special tokens as the tokenizer adds them: Gemma and Llama start a document with <bos>)."""

    def __init__(self, tokenizer_dir):
        self.hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.separator = document_separator(self.hf)
        self.dtype = token_dtype(len(self.hf))
        self._rust = self.hf.backend_tokenizer
        self.fingerprint = tokenizer_fingerprint(self.hf)  # once: a 256k vocabulary takes seconds

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        out = []
        for start in range(0, len(texts), TOKENIZE_BATCH):
            for enc in self._rust.encode_batch_fast(texts[start:start + TOKENIZE_BATCH], add_special_tokens=True):
                ids = enc.ids
                if not ids or ids[-1] != self.separator:
                    ids.append(self.separator)
                out.append(np.array(ids, dtype=self.dtype))
        return out

    def describe(self) -> dict:
        return {"name": self.hf.name_or_path, "vocab_size": len(self.hf), "fingerprint": self.fingerprint,
                "dtype": self.dtype.name,
                "separator": {"token": self.hf.convert_ids_to_tokens(self.separator), "id": self.separator}}
