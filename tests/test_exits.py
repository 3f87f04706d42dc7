"""Early exit: exit heads (every loop read out by the final norm and LM head), the
early-exit loss, and the oracle exit rate."""
import pytest
import torch

from rrt.eval.exit_rates import oracle_exit_counts, oracle_exit_rates
from rrt.model.convert import convert
from rrt.model.exits import exit_depths, exit_hidden_states, exit_logits
from rrt.train.early_exit import (
    AGGRESSIVE,
    early_exit_losses,
    exit_losses,
    exit_weights,
)

from .conftest import FAMILIES, make_tiny


def _recursive(family, loops=2, rank=0):
    return convert(make_tiny(family, layers=6), loops=loops, init="stepwise", rank=rank).eval()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("loops", [1, 2, 3])
def test_last_exit_is_the_models_output(family, loops, ids):
    model = _recursive(family, loops, rank=4)
    assert exit_depths(model) == [(b + 1) * 6 // loops - 1 for b in range(loops)]
    with torch.no_grad():
        hidden = exit_hidden_states(model, ids)
        logits = model(input_ids=ids).logits
        assert len(hidden) == loops
        assert torch.equal(exit_logits(model, hidden[-1]), logits)  # soft-capping included (Gemma 2/3)
        if loops > 1:
            assert not torch.allclose(exit_logits(model, hidden[0]), logits)


def test_a_plain_model_has_one_exit(ids):
    model = make_tiny("gemma2", layers=4)
    with torch.no_grad():
        (hidden,) = exit_hidden_states(model, ids)
        assert torch.equal(exit_logits(model, hidden), model(input_ids=ids).logits)


def test_intermediate_exit_is_the_first_loop_alone(ids):
    """Exit 1 of a B=2 model is what a model of its first loop's depths outputs."""
    model = _recursive("llama", 2, rank=4)
    first_loop = _recursive("llama", 2, rank=4)
    layers = first_loop.base.model.layers
    first_loop.base.model.layers = torch.nn.ModuleList(list(layers)[:3])
    first_loop.config.text_config.num_hidden_layers = 3
    with torch.no_grad():
        assert torch.allclose(exit_logits(model, exit_hidden_states(model, ids)[0]),
                              first_loop(input_ids=ids).logits, atol=1e-6)


def test_zero_intermediate_weights_give_the_plain_loss(ids):
    model = _recursive("gemma2", 2, rank=4)
    total, ces, kds = early_exit_losses(model, ids, weights=[0.0, 1.0])
    assert torch.allclose(total, model(input_ids=ids, labels=ids).loss, atol=1e-6)
    assert len(ces) == 2 and len(kds) == 1 and kds[0] > 0


def test_kd_sends_no_gradient_into_the_final_exit():
    torch.manual_seed(0)
    inter = torch.randn(2, 5, 11, requires_grad=True)
    final = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5))
    _, _, kds = exit_losses([inter, final], labels, [0.1, 1.0])
    kds[0].backward()
    assert final.grad is None and inter.grad.abs().sum() > 0
    # the whole loss: the final exit's gradient is its CE's alone
    final.grad = inter.grad = None
    total, ces, _ = exit_losses([inter, final], labels, AGGRESSIVE)
    total.backward()
    alone = final.detach().clone().requires_grad_()
    exit_losses([inter.detach(), alone], labels, [0.0, 1.0])[1][1].backward()
    assert torch.allclose(final.grad, alone.grad)


def test_exit_weights():
    assert exit_weights(0.1, 3) == [0.1, 0.1, 1.0]
    assert exit_weights([0.3, 1], 2) == [0.3, 1.0]
    with pytest.raises(ValueError, match="3 exit weights for a model with 2 loops"):
        exit_weights([0.1, 0.1, 1], 2)
    with pytest.raises(ValueError, match="final one > 0"):
        exit_weights([1, 0], 2)
    assert exit_weights("aggressive", 3) == [0.1, 0.1, 1.0]
    assert exit_weights("uniform", 2) == [1.0, 1.0]
    assert exit_weights("linear", 4) == [0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="unknown exit-weight schedule 'steep'"):
        exit_weights("steep", 2)


def test_oracle_exit_rate_on_a_hand_made_case():
    """4 positions, 3 exits. Final argmaxes: 0, 1, 2, 3. Exit 1 agrees at positions 0 and 3;
    exit 2 at 0, 1 and 3: position 1 exits at loop 2, position 2 only at the end."""
    eye = torch.eye(4)
    final = eye[[0, 1, 2, 3]]
    exit1 = eye[[0, 0, 0, 3]]
    exit2 = eye[[0, 1, 3, 3]]
    counts = oracle_exit_counts([exit1[None], exit2[None], final[None]])
    assert counts == {"positions": 4, "agree": [2, 3, 4], "first": [2, 1, 1]}
    rates = oracle_exit_rates(counts)
    assert rates["exit_at"] == [0.5, 0.25, 0.25] and rates["agree"] == [0.5, 0.75, 1.0]
    assert rates["mean_loops"] == pytest.approx(1.75)
    masked = oracle_exit_counts([exit1[None], exit2[None], final[None]], mask=torch.tensor([[1, 1, 0, 0]]))
    assert masked == {"positions": 2, "agree": [1, 2, 2], "first": [1, 1, 0]}


def _blocks(tmp_path, rows=5, block=12, seed=0):
    import datasets
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 96, (rows, block), generator=g).tolist()
    datasets.Dataset.from_dict({"input_ids": ids}).save_to_disk(str(tmp_path / "held"))
    return tmp_path / "held"


@pytest.mark.parametrize("loops", [1, 2])
def test_per_exit_perplexity_ends_with_the_models_perplexity(tmp_path, loops):
    from rrt.eval.perplexity import exit_perplexity, perplexity

    model = _recursive("gemma2", loops, rank=4)
    held = _blocks(tmp_path)
    per_exit, plain = exit_perplexity(model, held, batch_size=2), perplexity(model, held, batch_size=2)
    assert len(per_exit["exits"]) == loops and per_exit["tokens"] == plain["tokens"] == 5 * 11
    assert per_exit["exits"][-1]["ppl"] == pytest.approx(plain["ppl"], rel=1e-6)
    oracle = per_exit["oracle"]
    assert oracle["agree"][-1] == 1.0 and sum(oracle["exit_at"]) == pytest.approx(1.0)
    if loops == 1:
        assert oracle["exit_at"] == [1.0] and oracle["mean_loops"] == 1.0
    else:
        assert per_exit["exits"][0]["ppl"] != pytest.approx(plain["ppl"], rel=1e-3)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_perplexities_give_both_perplexities_exactly_from_one_pass(tmp_path, family):
    """`rrt eval --exits` measures the plain and the per-exit perplexity in one forward
    pass per batch: the same numbers, bit for bit, as the two passes it replaces."""
    from rrt.eval.perplexity import exit_perplexity, perplexities, perplexity

    model = _recursive(family, 2, rank=4)
    held = _blocks(tmp_path)
    plain, per_exit = perplexities(model, held, batch_size=2, thresholds={"max_prob": [0.5]})
    assert plain == perplexity(model, held, batch_size=2)
    assert per_exit == exit_perplexity(model, held, batch_size=2, thresholds={"max_prob": [0.5]})


def _train_data(tmp_path, blocks=16, block=16):
    import datasets
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(blocks):
        phase = int(torch.randint(0, 8, (1,), generator=g))
        rows.append([10 + (phase + j) % 8 for j in range(block)])
    datasets.Dataset.from_dict({"input_ids": rows}).save_to_disk(str(tmp_path / "data"))
    return tmp_path / "data"


def test_early_exit_training_trains_every_exit(tmp_path):
    import csv

    from .train_run import train

    _recursive("llama", 2, rank=4).save_pretrained(tmp_path / "model")
    data = _train_data(tmp_path)
    kw = dict(max_tokens=16 * 2 * 12, batch_tokens=32, micro_batch_size=2, lr=3e-3, save_steps=100, progress=False)
    summary = train(tmp_path / "model", data, tmp_path / "ee", exit_weights=[0.1, 1.0], **kw)
    rows = list(csv.DictReader(open(tmp_path / "ee" / "loss.csv")))
    assert list(rows[0]) == ["step", "tokens_seen", "loss", "ce", "kd", "ce_exit1", "ce_exit2", "lr"]
    first, last = rows[0], rows[-1]
    assert float(last["ce_exit1"]) < float(first["ce_exit1"]) and float(last["ce_exit2"]) < float(first["ce_exit2"])
    assert all(r["ce"] == r["ce_exit2"] for r in rows)
    for r in rows:  # the logged loss is the weighted sum
        expected = 0.1 * float(r["ce_exit1"]) + float(r["ce_exit2"]) + 0.1 * float(r["kd"])
        assert float(r["loss"]) == pytest.approx(expected, rel=1e-4)
    assert summary["config"]["exit_weights"] == [0.1, 1.0]
    # weights 0 / 1 train exactly what plain training trains
    train(tmp_path / "model", data, tmp_path / "final-only", exit_weights=[0.0, 1.0], **kw)
    train(tmp_path / "model", data, tmp_path / "plain", **kw)
    plain = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "plain" / "loss.csv"))]
    final_only = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "final-only" / "loss.csv"))]
    assert final_only == pytest.approx(plain, rel=1e-4)


def test_early_exit_training_refuses_a_teacher(tmp_path):
    from .train_run import train

    _recursive("llama", 2).save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="early-exit training takes no teacher"):
        train(tmp_path / "model", _train_data(tmp_path), tmp_path / "out", max_tokens=64, batch_tokens=32,
              exit_weights=[0.1, 1.0], teacher_dir=tmp_path / "model")


def test_cli_eval_exits_writes_per_exit_perplexity(tmp_path, capsys):
    import json

    from rrt.cli import main

    _recursive("llama", 3, rank=4).save_pretrained(tmp_path / "model")
    held = _blocks(tmp_path)
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tmp_path / "model"), "--out", str(out), "--ppl", f"x={held}",
                 "--tasks", "none", "--exits"]) == 0
    result = json.loads(out.read_text())
    assert result["exits"]["loops"] == 3 and result["exits"]["depths"] == [1, 3, 5]
    exits = result["exits"]["ppl"]["x"]
    assert len(exits["exits"]) == 3 and exits["exits"][-1]["ppl"] == pytest.approx(result["ppl_x"], rel=1e-6)
    assert len(exits["oracle"]["exit_at"]) == 3 and exits["oracle"]["agree"][-1] == 1.0


@pytest.mark.parametrize("chunk", [5, 64])
def test_chunked_early_exit_loss_equals_the_full_logits_one(ids, chunk):
    """Chunks of 5 positions (and one chunk holding all) give the loss, every exit's CE and
    KD, and the gradients of full logits."""
    model = _recursive("gemma2", 3, rank=4)
    labels = ids.clone()
    labels[:, :3] = -100
    full = early_exit_losses(model, ids, labels=labels, weights=[0.3, 0.1, 1.0], kd_weight=0.5)
    full[0].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    chunked = early_exit_losses(model, ids, labels=labels, weights=[0.3, 0.1, 1.0], kd_weight=0.5, chunk_tokens=chunk)
    chunked[0].backward()
    assert torch.allclose(chunked[0], full[0], rtol=1e-5)
    assert torch.allclose(torch.stack(chunked[1]), torch.stack(full[1]), rtol=1e-5)
    assert torch.allclose(torch.stack(chunked[2]), torch.stack(full[2]), rtol=1e-4, atol=1e-7)
    for n, p in model.named_parameters():
        if n in grads:
            assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-6), n
