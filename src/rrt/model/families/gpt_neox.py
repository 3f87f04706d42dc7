"""GPT-NeoX (Pythia): parallel residual, LayerNorms, fused QKV with biases, rotary on part
of each head, GELU MLP; its layer names the cache argument `layer_past`."""
from .spec import Family

GPT_NEOX = Family(
    name="gpt_neox",
    layers_path="gpt_neox.layers", norm_path="gpt_neox.final_layer_norm", rotary_path="gpt_neox.rotary_emb",
    attn="attention", mlp="mlp", attention_norm="input_layernorm",
    cache_kwarg="layer_past",
    activation_coeffs=(14, 4, 4, 4),  # measured (tests/test_budget.py); not broken down
    final_bytes=6,  # LayerNorm keeps only its fp32 input (4), and the bf16 head input (2)
    reads_residual=frozenset({"query_key_value", "dense_h_to_4h"}),
    hub_shapes={
        # d 2048, ffn 8192, 16 layers, 8 heads, vocab 50304 (padded), untied head, rotary on 25%
        # of each head, parallel residual, biases: 1.01B
        "EleutherAI/pythia-1b": {
            "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 8, "vocab_size": 50304, "tie_word_embeddings": False, "hidden_act": "gelu",
            "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": True,
            "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 0,
        },
    },
)
