"""Distillation losses: exact values on hand-made distributions and their properties."""
import math

import pytest
import torch

from rrt.settings import KD_KINDS as KINDS
from rrt.train.kd import divergence, divergence_sum, kd_loss

P = torch.tensor([0.5, 0.5])
Q = torch.tensor([0.25, 0.75])


def logits(probs, shift=0.0):
    """Logits whose softmax is `probs` (an additive shift must not matter)."""
    return probs.log() + shift


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p.tolist(), q.tolist()) if a > 0)


def test_forward_and_reverse_kl_by_hand():
    # KL(P||Q) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3)
    assert kl(P, Q) == pytest.approx(0.5 * math.log(4 / 3))
    # student Q, teacher P: forward KL is KL(teacher || student)
    fkl = kd_loss(logits(Q, 3.0), logits(P, -1.0), "fkl")
    assert fkl.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    # KL(Q||P) = 0.25 ln(0.5) + 0.75 ln(1.5)
    rkl = kd_loss(logits(Q), logits(P), "rkl")
    assert rkl.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)
    assert fkl.item() != pytest.approx(rkl.item(), abs=1e-3)  # the KLs are asymmetric


def test_jsd_and_tvd_by_hand():
    m = (P + Q) / 2  # [0.375, 0.625]
    expected_jsd = 0.5 * kl(P, m) + 0.5 * kl(Q, m)
    assert kd_loss(logits(Q), logits(P), "jsd").item() == pytest.approx(expected_jsd, abs=1e-6)
    assert kd_loss(logits(Q), logits(P), "tvd").item() == pytest.approx(0.25, abs=1e-6)  # 0.5 * (0.25 + 0.25)
    three_s, three_t = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.6, 0.3, 0.1])
    assert kd_loss(logits(three_s), logits(three_t), "tvd").item() == pytest.approx(0.4, abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_when_equal_and_positive_otherwise(kind):
    x = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0))
    y = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(1))
    assert kd_loss(x, x.clone(), kind).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(x, x + 7.0, kind).item() == pytest.approx(0.0, abs=1e-6)  # softmax ignores shifts
    assert kd_loss(x, y, kind).item() > 0


@pytest.mark.parametrize("kind", ["jsd", "tvd"])
def test_symmetric_losses(kind):
    x, y = torch.randn(4, 9), torch.randn(4, 9)
    assert kd_loss(x, y, kind).item() == pytest.approx(kd_loss(y, x, kind).item(), abs=1e-6)


def test_forward_kl_is_reverse_kl_swapped():
    x, y = torch.randn(4, 9), torch.randn(4, 9)
    assert kd_loss(x, y, "fkl").item() == pytest.approx(kd_loss(y, x, "rkl").item(), abs=1e-6)
    assert kd_loss(x, y, "fkl").item() != pytest.approx(kd_loss(x, y, "rkl").item(), abs=1e-4)


def test_bounds():
    x, y = torch.randn(64, 7) * 5, torch.randn(64, 7) * 5
    per_token_jsd = divergence(x, y, "jsd")
    per_token_tvd = divergence(x, y, "tvd")
    assert (per_token_jsd <= math.log(2) + 1e-6).all() and (per_token_jsd >= -1e-7).all()
    assert (per_token_tvd <= 1 + 1e-6).all() and (per_token_tvd >= 0).all()


def test_mask_averages_over_selected_positions_only():
    x = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(2))
    y = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    per_token = divergence(x, y, "fkl")
    assert kd_loss(x, y, "fkl", mask=mask).item() == pytest.approx(per_token[mask].mean().item(), abs=1e-6)
    # garbage in masked-out positions changes nothing
    x2 = x.clone()
    x2[~mask] = 1e4
    assert kd_loss(x2, y, "fkl", mask=mask).item() == pytest.approx(per_token[mask].mean().item(), abs=1e-6)
    assert kd_loss(x, y, "fkl", mask=torch.zeros(2, 4, dtype=torch.bool)).item() == 0.0


def test_temperature_softens_and_scales_kl_by_tau_squared():
    s, t = logits(Q), logits(P)
    tau = 2.0
    # at tau, the distributions are softmax(logit / tau); KL-type losses carry tau^2
    ps, pt = torch.softmax(s / tau, -1), torch.softmax(t / tau, -1)
    assert kd_loss(s, t, "fkl", temperature=tau).item() == pytest.approx(tau**2 * kl(pt, ps), abs=1e-6)
    assert kd_loss(s, t, "rkl", temperature=tau).item() == pytest.approx(tau**2 * kl(ps, pt), abs=1e-6)
    # TVD is not rescaled
    assert kd_loss(s, t, "tvd", temperature=tau).item() == pytest.approx(0.5 * (ps - pt).abs().sum().item(), abs=1e-6)
    # softer distributions are closer: the unscaled divergence shrinks with tau
    assert kd_loss(s, t, "fkl", temperature=tau).item() / tau**2 < kd_loss(s, t, "fkl").item()


def test_fp32_math_for_bf16_logits():
    x, y = torch.randn(8, 50), torch.randn(8, 50)
    low = kd_loss(x.bfloat16(), y.bfloat16(), "fkl")
    assert low.dtype == torch.float32
    exact = kd_loss(x.bfloat16().float(), y.bfloat16().float(), "fkl")
    assert low.item() == pytest.approx(exact.item(), abs=1e-6)


def test_stable_for_extreme_and_masked_vocab_logits():
    x = torch.tensor([[1000.0, 0.0, -1000.0]])
    y = torch.tensor([[0.0, 1000.0, float("-inf")]])  # a masked vocab entry in the teacher
    for kind in KINDS:
        value = kd_loss(x, y, kind)
        assert torch.isfinite(value), kind
    assert kd_loss(y, y, "fkl").item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_chunking_gives_same_value_and_gradient(kind):
    x = torch.randn(3, 10, 17, generator=torch.Generator().manual_seed(4))
    y = torch.randn(3, 10, 17, generator=torch.Generator().manual_seed(5))
    mask = torch.rand(3, 10, generator=torch.Generator().manual_seed(6)) > 0.3
    grads, values = [], []
    for chunk in (None, 4, 1000):
        s = x.clone().requires_grad_(True)
        loss = kd_loss(s, y, kind, temperature=1.5, mask=mask, chunk_tokens=chunk)
        loss.backward()
        values.append(loss.item())
        grads.append(s.grad)
    # the unchunked reference, straight through autograd
    s = x.clone().requires_grad_(True)
    divergence(s, y, kind, 1.5)[mask].mean().backward()
    for value, grad in zip(values, grads):
        assert value == pytest.approx(values[0], abs=1e-6)
        torch.testing.assert_close(grad, s.grad, atol=1e-6, rtol=1e-5)


def test_teacher_gets_no_gradient_and_bad_input_is_named():
    s = torch.randn(2, 5, requires_grad=True)
    t = torch.randn(2, 5, requires_grad=True)
    kd_loss(s, t, "fkl").backward()
    assert t.grad is None and s.grad is not None
    with pytest.raises(ValueError, match="kd loss must be one of"):
        kd_loss(s, t, "kl")
    with pytest.raises(ValueError, match="differ"):
        kd_loss(torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, "fkl", temperature=0)


def test_divergence_sum_is_the_unnormalised_kd_loss():
    """`divergence_sum`, what the chunked LM-head loss adds up chunk by chunk, is kd_loss
    times the number of positions."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    for kind in KINDS:
        torch.testing.assert_close(divergence_sum(s, t, kind, 2.0), kd_loss(s, t, kind, 2.0) * 15)
