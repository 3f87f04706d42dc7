"""Any tying pattern (`layer_map`), retying a live model, and Dynamic Layer Tying training:
shared storage and gradients, parameter counts, exports, the engine's refusal, the agent's
determinism, its budget, and exact resume."""
import csv
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rrt.cli import main
from rrt.model.convert import convert
from rrt.model.export_unrolled import unroll
from rrt.model.modeling import RecursiveConfig, RecursiveForCausalLM
from rrt.model.sharing import canonical, relabel
from rrt.model.tying import retie, tie, trainable_params, untie
from rrt.serve.engine import DepthwiseEngine
from rrt.settings import DLTSettings, SettingError, TrainSettings
from rrt.train import trainer
from rrt.train.checkpoints import last_checkpoint
from rrt.train.dlt import DECISIONS_CSV, DLTAgent

from .conftest import make_tiny
from .test_train import BLOCK, CrashAfterSave, Interrupted, one_thread, read_csv, save_blocks, weights  # noqa: F401
from .train_run import train_settings

# DLT form of a pattern no preset gives: depth 2 runs depth 1's layer, depth 4 depth 0's.
DLT_MAP = [0, 1, 1, 3, 0, 5]
SLOTS = [0, 1, 1, 2, 0, 3]


def _recursive(layer_map, rank=0, seed=0):
    base = make_tiny("llama", layers=len(layer_map), seed=seed)
    config = RecursiveConfig(text_config=base.config, layer_map=layer_map, lora_rank_attn=rank, lora_rank_mlp=rank)
    torch.manual_seed(seed)
    return RecursiveForCausalLM(config).eval()


def _fresh_count(text_config, layer_map) -> int:
    """Parameters of a model built from `layer_map` from the start."""
    return trainable_params(RecursiveForCausalLM(RecursiveConfig(text_config=text_config, layer_map=layer_map)))


# --- any tying pattern ------------------------------------------------------------------------
def test_any_map_is_checked_relabelled_and_described():
    model = _recursive(DLT_MAP)
    c = model.config
    assert (c.layer_map, c.num_slots, c.sharing, c.num_loops) == (SLOTS, 4, "custom", 1)
    assert canonical(c.layer_map) == DLT_MAP and relabel(DLT_MAP) == SLOTS
    assert [layer.slot for layer in model.depth_layers] == SLOTS
    assert model.depth_layers[4].block is model.depth_layers[0].block
    # a preset written out is recognised as that preset
    assert RecursiveConfig(text_config=c.text_config, layer_map=[0, 1, 2, 0, 1, 2]).num_loops == 2
    for bad, message in [([0, 1], "layer_map has 2 depths, the base model has 6"),
                         ([0, -1, 1, 1, 0, 0], "layer_map must be a list of integers >= 0"),
                         ([0, 1.5, 1, 1, 0, 0], "layer_map must be a list of integers >= 0")]:
        with pytest.raises(ValueError, match=message) as err:
            RecursiveConfig(text_config=c.text_config, layer_map=bad)
        assert "\n" not in str(err.value)


def test_any_map_saves_loads_exports_and_unrolls_to_the_same_logits(tmp_path, ids, capsys):
    """Per-depth LoRA on a custom map: save/from_pretrained, `rrt export` (self-contained and
    unrolled) and `rrt info` all follow the map."""
    model = _recursive(DLT_MAP, rank=4)
    with torch.no_grad():
        for p in model.parameters():  # LoRA B starts at zero: make every depth's LoRA count
            p.add_(torch.randn_like(p) * 0.01)
        expected = model(ids).logits
    model.save_pretrained(tmp_path / "rec")
    _check_exports(tmp_path / "rec", expected, ids, capsys, SLOTS)


def _check_exports(model_dir, expected, ids, capsys, slots):
    loaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert loaded.config.layer_map == slots
    assert main(["export", str(model_dir), "--out", str(model_dir.parent / "remote")]) == 0
    assert main(["export", str(model_dir), "--out", str(model_dir.parent / "plain"), "--unrolled"]) == 0
    remote = AutoModelForCausalLM.from_pretrained(model_dir.parent / "remote", trust_remote_code=True,
                                                  dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(model_dir.parent / "plain", dtype=torch.float32).eval()
    assert plain.config.model_type == "llama"
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
        assert torch.equal(remote(ids).logits, expected)
        torch.testing.assert_close(unroll(loaded)(ids).logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(plain(ids).logits, expected, atol=1e-5, rtol=1e-5)
    capsys.readouterr()
    assert main(["info", str(model_dir)]) == 0
    assert f"layer map: {' '.join(map(str, slots))} (depth -> shared slot); DLT form " \
           f"{' '.join(map(str, canonical(slots)))}" in capsys.readouterr().out


def test_engine_serves_loops_and_refuses_other_maps_in_one_line():
    DepthwiseEngine(_recursive([0, 1, 2, 0, 1, 2]), max_len=16)  # a loop, written out
    with pytest.raises(ValueError) as err:
        DepthwiseEngine(_recursive(DLT_MAP), max_len=16)
    message = str(err.value)
    assert "\n" not in message
    assert message.endswith("not 'custom' (layer map 0 1 1 2 0 3)")


# --- retying a live model ----------------------------------------------------------------------
def test_tie_shares_one_parameter_and_counts_what_the_map_implies():
    model = convert(make_tiny("llama", layers=4), loops=1, init="stepwise")
    text = model.config.text_config
    untied = trainable_params(model)
    tie(model, 3, 1)
    assert model.config.layer_map == [0, 1, 2, 1] and canonical(model.config.layer_map) == [0, 1, 2, 1]
    one, three = model.depth_layers[1].block, model.depth_layers[3].block
    assert one is three
    assert model.depth_layers[3].shared.at(3).self_attn.q_proj.weight is one.self_attn.q_proj.weight
    assert trainable_params(model) == _fresh_count(text, [0, 1, 2, 1]) < untied
    tie(model, 2, 0)
    assert trainable_params(model) == _fresh_count(text, [0, 1, 0, 1])
    before = {k: v.clone() for k, v in one.state_dict().items()}
    untie(model, 1)  # depth 1 takes a copy; depth 3 keeps the tensor they shared
    assert model.config.layer_map == [0, 1, 0, 2]
    assert model.depth_layers[3].block is one and model.depth_layers[1].block is not one
    for name, tensor in model.depth_layers[1].block.state_dict().items():
        assert torch.equal(tensor, before[name]) and tensor.data_ptr() != before[name].data_ptr()
    assert trainable_params(model) == _fresh_count(text, [0, 1, 0, 2])
    with pytest.raises(ValueError, match=r"depth must be an integer in \[0, 3\], got 7"):
        tie(model, 7, 0)


def test_gradients_reach_the_shared_tensor_from_every_depth(ids):
    """Depths 1 and 3 tied: the shared tensor's gradient is the sum of what the two depths
    send, i.e. of the gradients of the two layers of an untied model with equal weights."""
    base = make_tiny("llama", layers=4)
    with torch.no_grad():  # depth 3 starts as a copy of depth 1
        base.model.layers[3].load_state_dict(base.model.layers[1].state_dict())
    untied = convert(base, loops=1, init="stepwise").train()
    tied = convert(base, loops=1, init="stepwise").train()
    tie(tied, 3, 1)
    for model in (untied, tied):
        model(ids, labels=ids).loss.backward()
    for name, shared in tied.recursive_block[1].named_parameters():
        one = untied.recursive_block[1].get_parameter(name).grad
        three = untied.recursive_block[3].get_parameter(name).grad
        assert one.abs().sum() > 0 and three.abs().sum() > 0
        torch.testing.assert_close(shared.grad, one + three, atol=1e-6, rtol=1e-5)


def test_retie_follows_any_map_and_keeps_unmoved_layers():
    model = convert(make_tiny("llama", layers=6), loops=1, init="stepwise")
    blocks = list(model.recursive_block)
    change = retie(model, DLT_MAP)
    assert model.config.layer_map == SLOTS and model.config.sharing == "custom"
    assert list(model.recursive_block) == [blocks[0], blocks[1], blocks[3], blocks[5]]  # no copy needed
    assert not change.copied and len(change.dropped) == 2 * len(list(blocks[2].parameters()))
    assert trainable_params(model) == _fresh_count(model.config.text_config, SLOTS)


# --- the DLT agent -----------------------------------------------------------------------------
def test_the_budget_is_never_exceeded_by_the_agent():
    """Hundreds of decisions, exploring and greedy: never more than K unique
    layers, and a start over the budget is brought within it by ties."""
    for cap, epsilon in [(2, 1.0), (3, 0.0), (1, 0.5)]:
        agent = DLTAgent(DLTSettings(enabled=True, max_unique=cap, epsilon=epsilon, epsilon_min=0.0, seed=cap), 6)
        while agent.over_budget():
            agent.decide(0.0, forced=True)
        seen = set()
        for step in range(600):
            agent.decide(-float(step % 7))
            assert len(set(agent.layer_map)) <= cap, agent.layer_map
            assert all(agent.layer_map[agent.layer_map[d]] == agent.layer_map[d] <= d for d in range(6))
            seen.add(tuple(agent.layer_map))
        assert len(seen) > 1 or cap == 1  # it does move (one layer for all: nowhere to go)


def _agent(layers, **dlt):
    settings = {"enabled": True, "epsilon_min": 0.0, **dlt}
    return DLTAgent(DLTSettings(**settings), layers)


def _forced_phase(agent):
    while agent.over_budget():
        agent.decide(0.0, forced=True)


@pytest.mark.parametrize("layers, cap, expected", [
    (30, 15, [d % 15 for d in range(30)]),  # SmolLM2 under K = 15: rec-lower's CYCLE
    (8, 3, [0, 1, 2, 0, 1, 2, 0, 1]),       # a CYCLE whose last loop is partial
    (4, 2, [0, 1, 0, 1]),
    (6, 1, [0] * 6),
])
def test_the_forced_ties_make_the_cycle_of_k_layers(layers, cap, expected):
    """Before the first step an untied start over the budget is tied down to the CYCLE of its
    first K layers, depth d to depth d mod K, one tie per decision; the forced ties are not the
    agent's: no exploration (epsilon 0), no RNG drawn, nothing to learn, the layer in turn kept."""
    agent = _agent(layers, max_unique=cap, seed=3)
    rng = agent.rng.getstate()
    decided = []
    while agent.over_budget():
        decided.append(agent.decide(-1.0, forced=True))
    assert agent.layer_map == expected
    assert [(d, a) for d, a, _ in decided] == [(d, d % cap) for d in range(cap, layers)]
    assert {e for _, _, e in decided} == {0.0} and len(decided) == layers - cap
    assert (agent.rng.getstate(), agent.next_layer, agent.pending) == (rng, 1, None)


@pytest.mark.parametrize("layers, cap, epsilon", [(30, 15, 1.0), (30, 15, 0.2), (6, 3, 0.5), (6, 2, 0.0), (4, 1, 1.0)])
def test_budget_exactly_holds_k_at_every_decision(layers, cap, epsilon):
    """With `budget: exactly` every decision after the forced phase keeps exactly K unique
    layers, exploring or greedy, and the map still moves (depths change blocks)."""
    agent = _agent(layers, max_unique=cap, budget="exactly", epsilon=epsilon, epsilon_decay=1.0, seed=cap)
    _forced_phase(agent)
    seen = set()
    for step in range(400):
        layer, action, _ = agent.decide(-float(step % 5))
        assert len(set(agent.layer_map)) == cap, (step, layer, action, agent.layer_map)
        assert all(agent.layer_map[agent.layer_map[d]] == agent.layer_map[d] <= d for d in range(layers))
        seen.add(tuple(agent.layer_map))
    assert len(seen) > 1 or cap == 1


def test_budget_exactly_offers_only_count_keeping_actions():
    """At K: a depth alone may only stay (own); a depth sharing its layer may move to another
    layer or stay, never split off (own) or leave its layer empty."""
    agent = _agent(6, max_unique=3, budget="exactly")
    layer_map = [0, 1, 1, 3, 3, 3]  # depth 0 alone; 1-2 and 3-5 share
    assert agent.allowed(layer_map, 2) == [0, 1]  # join depth 0's layer or stay (copy 1); own splits
    assert agent.allowed(layer_map, 4) == [0, 1, 2, 3]  # move or stay; own splits
    assert agent.allowed(layer_map, 1) == [0]  # 1 begins its block: it may move (2 keeps the block), not split
    assert agent.allowed([0, 0, 2, 3, 3, 3], 2) == [2]  # alone: joining would leave 2 layers; own keeps it
    assert _agent(6, max_unique=3).allowed(layer_map, 2) == [0, 1]  # at_most at K: the same ceiling
    assert _agent(6, max_unique=3).allowed([0, 0, 2, 3, 3, 3], 2) == [0, 1, 2]  # ... but it may drop below K


def test_the_agent_is_deterministic_with_a_seed():
    def run(seed):
        agent = _agent(30, max_unique=15, budget="exactly", seed=seed)
        _forced_phase(agent)
        return [agent.decide(-float(step % 3))[:2] for step in range(120)], agent.layer_map
    assert run(7) == run(7) and run(7) != run(8)


def test_a_budget_it_cannot_hold_is_one_line():
    with pytest.raises(SettingError, match="budget exactly needs max_unique"):
        DLTSettings(enabled=True, budget="exactly")
    with pytest.raises(ValueError, match="dlt.budget exactly with max_unique 5: the model has only 4 layers"):
        _agent(4, max_unique=5, budget="exactly")


def _dlt_settings(**dlt):
    settings = train_settings(max_tokens=8 * 4 * BLOCK, batch_tokens=4 * BLOCK, save_steps=2, warmup_steps=1, seed=3,
                              micro_batch_size=2, lr=1e-2)
    return TrainSettings.from_dict({**settings.to_dict(), "dlt": {"enabled": True, "interval": 1, **dlt}})


@pytest.fixture(scope="module")
def dlt_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dlt")
    make_tiny("llama", layers=4).save_pretrained(root / "base")
    return root / "base", save_blocks(root / "data", 12, period=5)


def test_a_fixed_seed_makes_the_same_decisions_and_keeps_the_budget(dlt_inputs, tmp_path):
    base, data = dlt_inputs
    settings = _dlt_settings(max_unique=2, seed=1)
    for name in ("a", "b"):
        trainer.train(base, data, tmp_path / name, settings, progress=False)
    text = (tmp_path / "a" / DECISIONS_CSV).read_text()
    assert text == (tmp_path / "b" / DECISIONS_CSV).read_text()
    rows = read_csv(tmp_path / "a" / DECISIONS_CSV)
    assert list(rows[0]) == ["step", "layer_map", "unique_layers", "trainable_params", "reward", "epsilon"]
    # 4 untied layers over a budget of 2: two forced ties before step 1, then one decision a step
    assert [r["step"] for r in rows] == ["0", "0", "1", "2", "3", "4", "5", "6", "7"]
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "final")
    text_config = final.config.text_config
    # the forced ties at step 0 take the untied start down to the budget, one layer each;
    # from there on no map has more than K = 2 layers
    assert [int(r["unique_layers"]) for r in rows[:2]] == [3, 2]
    for row in rows:
        layer_map = [int(x) for x in row["layer_map"].split()]
        assert int(row["unique_layers"]) == len(set(layer_map))
        assert int(row["unique_layers"]) <= 2 or row["step"] == "0"
        assert int(row["trainable_params"]) == _fresh_count(text_config, layer_map)
    assert canonical(final.config.layer_map) == [int(x) for x in rows[-1]["layer_map"].split()]
    assert trainable_params(final) == int(rows[-1]["trainable_params"])
    # another agent seed is another run: its decisions differ
    trainer.train(base, data, tmp_path / "c", _dlt_settings(max_unique=2, seed=2), progress=False)
    assert (tmp_path / "c" / DECISIONS_CSV).read_text() != text


def test_a_run_under_budget_exactly_ends_the_size_of_the_k_layer_model(dlt_inputs, tmp_path):
    """4 untied layers, K = 2, `exactly`: the forced ties make the CYCLE `0 1 0 1`, and
    every decision after them keeps 2 unique layers, so the final model has the parameters
    of the 2-layer recursive model (its map need not be a loop)."""
    base, data = dlt_inputs
    trainer.train(base, data, tmp_path / "run", _dlt_settings(max_unique=2, budget="exactly", seed=1), progress=False)
    rows = read_csv(tmp_path / "run" / DECISIONS_CSV)
    assert [(r["step"], r["layer_map"], r["epsilon"]) for r in rows[:2]] == [("0", "0 1 0 3", "0.0"),
                                                                             ("0", "0 1 0 1", "0.0")]
    assert [int(r["unique_layers"]) for r in rows[2:]] == [2] * 7
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert len(set(final.config.layer_map)) == 2
    assert trainable_params(final) == _fresh_count(final.config.text_config, [0, 1, 0, 1])


@pytest.mark.parametrize("budget, cap", [("at_most", 3), ("exactly", 3)])
def test_kill_then_resume_gives_the_uninterrupted_run(dlt_inputs, tmp_path, budget, cap):
    """Killed right after its step-4 checkpoint (decisions at every step, on both sides of it),
    the resumed run ends with the uninterrupted run's loss.csv, decisions and weights."""
    base, data = dlt_inputs
    settings = _dlt_settings(max_unique=cap, budget=budget, seed=5)
    trainer.train(base, data, tmp_path / "whole", settings, progress=False)
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        trainer.train(base, data, cut, settings, callbacks=[CrashAfterSave(4)], progress=False)
    assert last_checkpoint(cut / "checkpoints").name == "checkpoint-4"
    (cut / "checkpoints" / "checkpoint-6").mkdir()  # a save cut off midway: skipped
    other = TrainSettings.from_dict({**settings.to_dict(), "dlt": {**settings.dlt.to_dict(), "seed": 6}})
    with pytest.raises(ValueError, match="holds a run with dlt="):
        trainer.train(base, data, cut, other, progress=False)
    summary = trainer.train(base, data, cut, settings, progress=False)
    assert summary["resumed_from_step"] == 4
    whole_rows = read_csv(tmp_path / "whole" / DECISIONS_CSV)
    assert len({r["layer_map"] for r in whole_rows}) > 1  # the map did change during the run
    assert (cut / DECISIONS_CSV).read_text() == (tmp_path / "whole" / DECISIONS_CSV).read_text()
    assert (cut / "loss.csv").read_text() == (tmp_path / "whole" / "loss.csv").read_text()
    a, b = weights(tmp_path / "whole" / "final"), weights(cut / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_dlt_model_reloads_exports_and_unrolls_to_the_same_logits(dlt_inputs, tmp_path, ids, capsys):
    base, data = dlt_inputs
    trainer.train(base, data, tmp_path / "run", _dlt_settings(max_unique=2, seed=1), progress=False)
    final = tmp_path / "run" / "final"
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    assert len(set(model.config.layer_map)) <= 2
    with torch.no_grad():
        expected = model(ids).logits
    _check_exports(final, expected, ids, capsys, model.config.layer_map)


def test_a_dlt_run_starts_untied(dlt_inputs, tmp_path):
    base, data = dlt_inputs
    looped = tmp_path / "looped"
    convert(make_tiny("llama", layers=4), loops=2).save_pretrained(looped)
    with pytest.raises(ValueError, match="starts from an untied model: .* ties its 4 depths into 2 layers") as err:
        trainer.train(looped, data, tmp_path / "out", _dlt_settings(), progress=False)
    assert "\n" not in str(err.value)


def test_cli_takes_dlt_settings_and_flags(dlt_inputs, tmp_path):
    """`rrt train --settings JSON` with a `dlt` section, a flag laid over it."""
    base, data = dlt_inputs
    out = tmp_path / "out"
    settings = json.dumps({"tokens": 4 * 4 * BLOCK, "batch_tokens": 4 * BLOCK, "micro_batch_size": 2,
                           "dlt": {"enabled": True, "interval": 2, "seed": 4}})
    assert main(["train", "--model", str(base), "--data", str(data), "--out", str(out), "--settings", settings,
                 "--dlt-max-unique", "3"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["config"]["dlt"]["max_unique"] == 3 and summary["config"]["dlt"]["interval"] == 2
    with open(out / DECISIONS_CSV) as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "2"]  # one forced tie (4 -> 3), then step 2 (of 4)
