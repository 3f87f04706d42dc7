"""Parameter accounting against the paper's Gemma 2B sizes (meta device: no weights)."""
import pytest
import torch
from transformers import GemmaConfig

from rrt import RecursiveConfig, RecursiveForCausalLM
from rrt.model.params import count_params

GEMMA_2B = GemmaConfig(vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                       num_attention_heads=8, num_key_value_heads=1, head_dim=256)


@pytest.mark.parametrize("loops,rank,paper_billions", [
    (2, 0, 0.99), (2, 64, 1.07), (2, 128, 1.15), (2, 256, 1.30), (2, 512, 1.60), (3, 0, 0.66),
    (3, 64, 0.74), (3, 128, 0.82), (3, 256, 0.97), (3, 512, 1.27),
])
def test_gemma_2b_non_embedding_sizes_match_paper(loops, rank, paper_billions):
    with torch.device("meta"):
        model = RecursiveForCausalLM(RecursiveConfig(text_config=GEMMA_2B.to_dict(), num_loops=loops,
                                                     lora_rank_attn=rank, lora_rank_mlp=rank))
    counts = count_params(model)
    assert counts["non_embedding"] / 1e9 == pytest.approx(paper_billions, rel=0.01)
    assert counts["embedding"] == 256000 * 2048  # tied head counted once
    assert counts["total"] == counts["non_embedding"] + counts["embedding"]
