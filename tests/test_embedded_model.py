"""The embedded SmolLM2-135M as the GGUF describes it, without dequantising its weights
(seconds): the fast counterpart of tests/test_real_model.py (slow), which materialises the
weights and checks what the model says."""
import torch
from transformers import AutoModelForCausalLM

from rrt.model.base_models import embedded_config, embedded_tokenizer


def test_embedded_config_is_smollm2_135m():
    config = embedded_config()
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    assert (config.hidden_size, config.intermediate_size, config.vocab_size) == (576, 1536, 49152)
    with torch.device("meta"):  # shapes only: the parameter count materialize's model has
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_embedded_tokenizer_is_smollm2s():
    tok = embedded_tokenizer()
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 0
    assert tok.decode(tok("The capital of France is Paris").input_ids) == "The capital of France is Paris"
