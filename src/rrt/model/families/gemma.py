"""Gemma 1 (the paper's Gemma 2B): Llama's layout with a scaled embedding (the family's own
embedding module scales itself), (1 + w) RMSNorms, GELU-gated MLP; the 2B has one KV head."""
from .spec import LLAMA_LAYOUT, Family

GEMMA = Family(
    name="gemma",
    **LLAMA_LAYOUT,
    activation_coeffs=(26, 4, 4, 8),  # measured; the breakdown is Llama's (llama.py)
    final_bytes=10,  # RMSNorm: its fp32 input and output (4 + 4), and the bf16 head input (2)
    norm_weight_offset=1.0,  # (1 + w) RMSNorms
    hub_shapes={
        # d 2048, ffn 16384, 18 layers, 8 heads / 1 KV head of 256, vocab 256000, tied head:
        # 2.51B (1.98B non-embedding)
        "google/gemma-2b": {
            "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
            "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 256000,
            "tie_word_embeddings": True, "hidden_act": "gelu_pytorch_tanh",  # config.json: "gelu", which
            # transformers reads as the tanh approximation (with a warning)
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "attention_bias": False,
            "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        },
    },
)
