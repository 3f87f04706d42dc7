"""Llama 2/3, TinyLlama, SmolLM2 (the embedded default): pre-norm RMSNorm, grouped-query
attention, gated SiLU MLP."""
from .spec import LLAMA_LAYOUT, Family

LLAMA = Family(
    name="llama",
    **LLAMA_LAYOUT,
    # Measured (tests/test_budget.py). 26·d: 8·d per RMSNorm of the fp32 residual (its input
    # and output; two norms) and 2·d per bf16 copy of the normalised residual a linear keeps
    # (q, k, v, gate, up); 4·d_q: q and the attention output in bf16; 4·d_kv: k and v in bf16;
    # 8·d_ffn: the gated MLP's four d_ffn-wide bf16 tensors.
    activation_coeffs=(26, 4, 4, 8),
    final_bytes=10,  # RMSNorm: its fp32 input and output (4 + 4), and the bf16 head input (2)
    hub_shapes={
        # d 2048, ffn 5632, 22 layers, 32 heads / 4 KV heads, vocab 32000, untied head: 1.10B
        "TinyLlama/TinyLlama-1.1B-step-50K-105b": {
            "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
            "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 64, "vocab_size": 32000,
            "tie_word_embeddings": False, "hidden_act": "silu", "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2,
        },
    },
)
