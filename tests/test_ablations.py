"""The ablation choices of the variants table (config/README.md), on a tiny model of every
family: the stepwise rule (fixed-ends / fixed-start), `middle` sharing, how Average sets
the shared norms, zero-init LoRA, per-module ranks, `scratch-layers`, and the KD loss a
variant's uptraining uses."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rrt.cli import main
from rrt.model.convert import convert, rank_caps
from rrt.model.families import family_of
from rrt.model.modeling import RecursiveForCausalLM
from rrt.model.params import count_params
from rrt.model.relax import DepthLinear, is_norm
from rrt.model.sharing import depth_to_slot, init_sources, stepwise_indices
from rrt.serve.engine import DepthwiseEngine
from rrt.train.budget import model_size

from .conftest import FAMILIES, make_tiny
from .test_train import BLOCK, models, read_csv, save_blocks  # noqa: F401  (models: a fixture)

LAYERS = 6  # loops 2: K = 3 (ends [0, 2, 5], start [0, 2, 4]); middle: K' = 2 between layers 0 and 5


def originals(base):
    return base.get_submodule(family_of(base.config).layers_path)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_stepwise_rules():
    assert stepwise_indices(18, 9) == [0, 2, 4, 6, 8, 11, 13, 15, 17]  # fixed-ends (the default)
    assert stepwise_indices(18, 9, "start") == [0, 2, 4, 6, 8, 10, 12, 14, 16]  # fixed-start
    assert stepwise_indices(12, 4, "start") == [0, 3, 6, 9]
    with pytest.raises(ValueError, match="stepwise_rule must be one of"):
        stepwise_indices(12, 4, "middle")


@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_start_takes_every_bth_layer_from_layer_0(family, tmp_path):
    base = make_tiny(family, layers=LAYERS)
    ends = convert(base, loops=2, init="stepwise")
    start = convert(base, loops=2, init="stepwise", stepwise_rule="start")
    assert ends.config.init_sources == [[0], [2], [5]]
    assert start.config.init_sources == [[0], [2], [4]]
    for slot, layer in enumerate([0, 2, 4]):
        assert same_state(start.recursive_block[slot], originals(base)[layer])
    start.save_pretrained(tmp_path / "m")
    loaded = RecursiveForCausalLM.from_pretrained(tmp_path / "m")
    assert (loaded.config.stepwise_rule, ends.config.stepwise_rule) == ("start", "ends")
    with pytest.raises(ValueError, match="stepwise_rule 'start' needs init stepwise, not 'average'"):
        convert(base, loops=2, init="average", stepwise_rule="start")


@pytest.mark.parametrize("family", FAMILIES)
def test_middle_keeps_first_and_last_layers_and_cycles_the_rest(family, ids):
    base = make_tiny(family, layers=LAYERS)
    assert depth_to_slot(LAYERS, 2, "middle") == [0, 1, 2, 1, 2, 3]
    for init, sources in (("stepwise", [[0], [1], [4], [5]]), ("average", [[0], [1, 3], [2, 4], [5]]),
                          ("lower", [[0], [1], [2], [5]])):
        model = convert(base, loops=2, init=init, sharing="middle")
        assert model.config.init_sources == sources and model.config.num_slots == 4
        assert same_state(model.recursive_block[0], originals(base)[0])   # bit for bit
        assert same_state(model.recursive_block[3], originals(base)[LAYERS - 1])
    # Four unique layers of six: the non-embedding count is two layers below the base's.
    layer = sum(p.numel() for p in originals(base)[0].parameters())
    assert count_params(base)["non_embedding"] - count_params(model)["non_embedding"] == 2 * layer
    # rrt plan sizes it as built, and the relaxed one with its LoRA.
    relaxed = convert(base, loops=2, init="average", sharing="middle", rank=2)
    for m, rank in ((model, 0), (relaxed, 2)):
        size = model_size(base.config, "recursive", 2, "middle", rank)
        assert (size["params"], size["lora"]) == (count_params(m)["total"], count_params(m)["lora"])
    # Middle sharing with full-rank LoRA and its own norms is the original model.
    exact = convert(base, loops=2, init="average", sharing="middle", rank="full", per_depth_norms=True)
    with torch.no_grad():
        torch.testing.assert_close(exact(ids).logits, base(ids).logits, atol=2e-4, rtol=1e-4)
    # The depth-wise engine runs loops of the same K layers: it refuses middle sharing.
    with pytest.raises(ValueError, match="depth-wise batching needs cycle sharing .* not 'middle'"):
        DepthwiseEngine(model)


def test_middle_needs_loops_dividing_the_middle_layers():
    with pytest.raises(ValueError, match="loops=3 does not divide the 4 middle layers of the base model"):
        depth_to_slot(LAYERS, 3, "middle")
    assert init_sources(depth_to_slot(10, 2, "middle"), "stepwise", sharing="middle", stepwise_rule="start") \
        == [[0], [1], [3], [5], [7], [9]]


def _reference_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a norm that scales by 1 (and shifts by 0) gives."""
    if isinstance(norm, nn.LayerNorm):
        return F.layer_norm(x, norm.normalized_shape, eps=norm.eps)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("family", FAMILIES)
def test_norm_init_first_and_unit(family):
    base = make_tiny(family, layers=LAYERS)
    offset = family_of(base.config).norm_weight_offset
    assert offset == (1.0 if family.startswith("gemma") else 0.0)
    average = convert(base, loops=2, init="average")
    first = convert(base, loops=2, init="average", norm_init="first")
    unit = convert(base, loops=2, init="average", norm_init="unit")
    assert (first.config.norm_init, unit.config.norm_init, average.config.norm_init) == ("first", "unit", "average")
    for slot, sources in enumerate(average.config.init_sources):
        norms = [p for p, m in average.recursive_block[slot].named_modules() if is_norm(m)]
        assert norms, family
        for path, tensor in average.recursive_block[slot].state_dict().items():
            owner = path.rsplit(".", 1)[0]
            if owner in norms:
                expected = originals(base)[sources[0]].state_dict()[path]
                assert torch.equal(first.recursive_block[slot].state_dict()[path], expected), path
                value = (1.0 - offset) if path.endswith("weight") else 0.0
                assert torch.equal(unit.recursive_block[slot].state_dict()[path], torch.full_like(tensor, value)), path
            else:  # every other weight is still the average
                assert torch.equal(first.recursive_block[slot].state_dict()[path], tensor), path
                assert torch.equal(unit.recursive_block[slot].state_dict()[path], tensor), path
        for path in norms:
            norm = unit.recursive_block[slot].get_submodule(path)
            x = torch.randn(3, norm.weight.shape[0])
            torch.testing.assert_close(norm(x), _reference_norm(norm, x))
    with pytest.raises(ValueError, match="norm_init 'unit' needs init average"):
        convert(base, loops=2, init="stepwise", norm_init="unit")


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_init_lora_starts_as_pure_sharing_and_trains(family, ids):
    base = make_tiny(family, layers=4)
    plain = convert(base, loops=2, init="average")
    zero = convert(base, loops=2, init="average", rank=2, lora_init="zero")
    assert zero.config.lora_init == "zero" and count_params(zero)["lora"] > 0
    loras = [m for m in zero.modules() if isinstance(m, DepthLinear) and m.rank > 0]
    assert loras and all(torch.count_nonzero(m.lora_B) == 0 for m in loras)
    with torch.no_grad():
        assert torch.equal(zero(ids).logits, plain(ids).logits)
    zero.train()
    zero(input_ids=ids, labels=ids).loss.backward()
    for m in loras:
        assert m.lora_B.grad is not None and torch.count_nonzero(m.lora_B.grad) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_per_module_ranks(family):
    base = make_tiny(family, layers=4)
    model = convert(base, loops=2, init="average", rank=0, rank_attn=2)
    caps = rank_caps(base.config)
    shapes = {p: m for p, m in originals(base)[0].named_modules() if isinstance(m, nn.Linear)}
    attn = sum(2 * (shapes[p].in_features + shapes[p].out_features) for p in caps["attn"])
    assert count_params(model)["lora"] == 4 * attn  # every depth, attention linears only
    assert (model.config.lora_rank_attn, model.config.lora_rank_mlp) == (2, 0)
    size = model_size(base.config, "recursive", 2, "cycle", 2, rank_mlp=0)
    assert (size["params"], size["lora"]) == (count_params(model)["total"], count_params(model)["lora"])


@pytest.mark.parametrize("family", FAMILIES)
def test_scratch_layers_keeps_the_pretrained_embeddings_norm_and_head(family):
    base = make_tiny(family, layers=4)
    layers_prefix = family_of(base.config).layers_path + "."
    outer = {k: v for k, v in base.state_dict().items() if not k.startswith(layers_prefix)}
    for init in ("scratch-layers", "scratch"):
        model = convert(base, loops=2, init=init, rank=2)
        assert model.config.init == init and model.config.init_sources is None
        mine = model.base.state_dict()
        kept = all(torch.equal(mine[k], v) for k, v in outer.items())
        assert kept == (init == "scratch-layers"), init  # scratch randomises them too
        for block in model.recursive_block:  # the shared layers are random either way
            assert not any(same_state(block, original) for original in originals(base))
        assert count_params(model) == count_params(convert(base, loops=2, init="stepwise", rank=2))


def test_an_old_checkpoint_loads_with_todays_choices(tmp_path):
    convert(make_tiny("llama", layers=4), loops=2, init="stepwise").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("stepwise_rule", "norm_init"):
        del config[key]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = RecursiveForCausalLM.from_pretrained(tmp_path)
    assert (loaded.config.stepwise_rule, loaded.config.norm_init) == ("ends", "average")


def test_kd_loss_reaches_the_trainer(models, tmp_path):
    """The workflow passes a variant's kd_loss as `kd.loss` of `rrt train --settings`: the
    same tiny run with fkl and rkl logs different KD losses."""
    base, rec = models
    data = save_blocks(tmp_path / "data", 8)
    kd = {}
    for loss in ("fkl", "rkl"):
        settings = {"tokens": 2 * 4 * BLOCK, "batch_tokens": 4 * BLOCK, "micro_batch_size": 2, "lr": 1e-2,
                    "kd": {"loss": loss, "weight": 0.5, "temperature": 1.0}}
        out = tmp_path / loss
        main(["train", "--model", str(rec), "--data", str(data), "--out", str(out), "--teacher", str(base),
              "--settings", json.dumps(settings)])
        kd[loss] = [float(r["kd"]) for r in read_csv(out / "loss.csv")]
        assert json.loads((out / "train_summary.json").read_text())["config"]["kd_kind"] == loss
    assert all(v > 0 for v in kd["fkl"] + kd["rkl"])
    assert kd["fkl"][0] != pytest.approx(kd["rkl"][0], rel=1e-3)
