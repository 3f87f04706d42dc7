"""`rrt plan`: parameter counts (meta-built models against real ones, and the paper's sizes),
FLOPs, jobs, memory and the command itself. Offline: the hub models' shapes are built in."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Gemma3TextConfig, GemmaConfig, GPTNeoXConfig, LlamaConfig

from rrt import RecursiveConfig, RecursiveForCausalLM
from rrt.cli import main
from rrt.errors import UsageError
from rrt.model.baselines import reduce_depth
from rrt.model.convert import convert
from rrt.model.params import compute_params, count_params
from rrt.model.shapes import HUB_SHAPES, base_config, shape_config
from rrt.settings import PLAN
from rrt.train import budget
from rrt.variants import read_variants

from .conftest import _configs, cli_error, make_tiny

ROOT = Path(__file__).resolve().parents[1]
GEMMA, TINYLLAMA, PYTHIA = "google/gemma-2b", "TinyLlama/TinyLlama-1.1B-step-50K-105b", "EleutherAI/pythia-1b"
H100 = PLAN["gpu_specs"]["h100"]["peak_tflops"] * 1e12


def _size(hub_id, kind="full", loops=1, rank=0):
    return budget.model_size(base_config({"source": "hub", "hub_id": hub_id}), kind, loops, "cycle", rank)


# --- parameters -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma", "gpt_neox"])
def test_meta_counts_equal_real_models(family):
    base = make_tiny(family)
    text = base.config
    expected = {"full": (base, 1, 0)}
    for rank in (0, 8):
        expected[f"recursive-r{rank}"] = (convert(base, loops=2, init="average", rank=rank), 2, rank)
    expected["reduced"] = (reduce_depth(base, 3, "lower"), 2, 0)
    for name, (model, loops, rank) in expected.items():
        size = budget.model_size(text, name.split("-")[0], loops, "cycle", rank)
        counts, compute = count_params(model), compute_params(model)
        got = {"total": size["params"], "non_embedding": size["non_embedding"], "embedding": size["embedding"],
               "lora": size["lora"]}
        assert got == counts, (family, name)
        assert (size["n_layers"], size["n_head"], size["n_eff"]) == (compute["layers"], compute["head"],
                                                                     compute["total"]), (family, name)
        assert size["depths"] == (3 if name == "reduced" else 6)


def test_compute_params_by_hand():
    """Tiny llama (d 64, ffn 96, 4 heads of 16, 2 KV heads, vocab 96, 6 layers), B=2, r=8."""
    text = _configs(6)["llama"][1]
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 96                    # q, o; k, v; gate, up, down
    lora = 8 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 96))             # r·(in + out) per linear
    size = budget.model_size(text, "recursive", 2, "cycle", 8)
    assert size["n_eff"] == 6 * per_layer + 6 * lora + 96 * 64             # every depth + the (tied) head
    # unique: K=3 shared layers (their 2 norms each), 6 depths of LoRA, final norm, embedding
    assert size["params"] == 3 * per_layer + 6 * lora + 3 * 2 * 64 + 64 + 96 * 64


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_compute_params_are_the_forward_matmul_flops(family, ids):
    """2·N_eff FLOPs per token, counted by torch (SDPA's attention is not counted on CPU)."""
    model = convert(make_tiny(family), loops=2, init="average", rank=8)
    model.set_attn_implementation("sdpa")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids)
    assert counter.get_total_flops() == 2 * compute_params(model)["total"] * ids.numel()


def test_paper_model_sizes():
    gemma = _size(GEMMA)
    assert gemma["params"] / 1e9 == pytest.approx(2.51, abs=0.005)
    assert gemma["non_embedding"] / 1e9 == pytest.approx(1.98, abs=0.005)
    assert _size(TINYLLAMA)["params"] / 1e9 == pytest.approx(1.10, abs=0.005)
    assert _size(PYTHIA)["params"] / 1e9 == pytest.approx(1.01, abs=0.005)
    # The paper's non-embedding sizes of recursive Gemma 2B, B=2, LoRA on every linear.
    assert _size(GEMMA, "recursive", 2, 0)["non_embedding"] / 1e9 == pytest.approx(0.99, abs=0.005)
    assert _size(GEMMA, "recursive", 2, 64)["non_embedding"] / 1e9 == pytest.approx(1.07, abs=0.005)
    # The unrolled model computes as much as the original (+ LoRA): the point of the paper.
    assert _size(GEMMA, "recursive", 2, 0)["n_eff"] == gemma["n_eff"]


def test_hub_shapes_are_the_published_configs():
    for hub_id, fields in HUB_SHAPES.items():
        config = shape_config(fields)
        assert config.model_type == fields["model_type"]
        assert config.hidden_size == 2048
    assert shape_config(HUB_SHAPES[PYTHIA]).rope_parameters["partial_rotary_factor"] == 0.25
    assert shape_config(HUB_SHAPES[GEMMA]).tie_word_embeddings
    assert not shape_config(HUB_SHAPES[TINYLLAMA]).tie_word_embeddings


def test_unknown_hub_model_is_a_usage_error():
    with pytest.raises(UsageError, match="'nobody/nothing' is neither in the HF cache"):
        base_config({"source": "hub", "hub_id": "nobody/nothing"})


# --- activations: the formula against the tensors autograd keeps ------------------------------
def _saved_bytes(model, tokens: int) -> int:
    """Bytes of the distinct tensors autograd saves in a bf16-autocast forward (weights and
    their bf16 copies excluded by the caller's difference of two lengths)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, model.config.get_text_config().vocab_size, (1, tokens),
                        generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, use_cache=False)
    return sum(seen.values())


def _act_configs():
    common = dict(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4)
    return {
        "llama": LlamaConfig(**common, num_key_value_heads=2, head_dim=32),
        "gemma": GemmaConfig(**common, num_key_value_heads=1, head_dim=64),
        "gemma3": Gemma3TextConfig(**common, num_key_value_heads=1, head_dim=64, sliding_window=4096),
        "gpt_neox": GPTNeoXConfig(**common),
    }


@pytest.mark.parametrize("family", ["llama", "gemma", "gemma3", "gpt_neox"])
@pytest.mark.parametrize("rank", [0, 8])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_formula_matches_saved_tensors(family, rank, checkpointing):
    text = _act_configs()[family]
    text._attn_implementation = "sdpa"
    model = RecursiveForCausalLM(RecursiveConfig(text_config=text, num_loops=2, lora_rank_attn=rank,
                                                 lora_rank_mlp=rank))
    model.set_attn_implementation("sdpa")
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    measured = (_saved_bytes(model, 96) - _saved_bytes(model, 32)) / 64
    size = budget.model_size(text, "recursive", 2, "cycle", rank)
    formula = budget.activation_bytes(size, 1, checkpointing)
    if checkpointing:  # the forward keeps only the inputs; one depth's activations come in backward
        formula -= size["act_depth"]
    assert measured == pytest.approx(formula, rel=0.015)  # per-head softmax statistics aside


# --- FLOPs, hours, jobs ---------------------------------------------------------------------
def test_flops_by_hand():
    size = {"n_eff": 100, "n_layers": 80, "n_head": 20, "depths": 2, "d_attn": 4}
    teacher = {"n_eff": 200, "n_layers": 150, "n_head": 50, "depths": 4, "d_attn": 4}
    attention = 2 * 2 * 8 * 4  # 2·L_eff·ctx·d_attn with ctx 8
    forward = 2 * 100 + attention
    flops = budget.train_flops_per_token
    assert flops(size, 8, checkpointing=False, chunked=False) == 3 * forward == 984
    assert flops(size, 8, checkpointing=True, chunked=False) == 3 * forward + 2 * 80 + attention
    # Checkpointing and chunked loss together recompute exactly one forward.
    assert flops(size, 8, checkpointing=True, chunked=True) == 4 * forward
    assert flops(size, 8, checkpointing=True, chunked=True, teacher=teacher) == 4 * forward + (400 + 256) + 100
    # Early-exit training, 3 exits: two more heads, forward and backward (chunked: recomputed,
    # and the final exit's head as their KD target, recomputed too).
    assert flops(size, 8, checkpointing=False, chunked=False, exits=3) == 3 * forward + 2 * 6 * 20
    assert flops(size, 8, checkpointing=True, chunked=True, exits=3) == 4 * forward + 2 * 12 * 20


def test_jobs_arithmetic():
    assert budget.jobs_needed(0, 60, 300) == 0
    assert budget.jobs_needed(55 / 60, 60, 300) == 1    # exactly one job's work (55 min)
    assert budget.jobs_needed(56 / 60, 60, 300) == 2
    assert budget.jobs_needed(27.2, 1440, 900) == 2     # 1632 min of work in 1425-min slices
    assert pd.isna(budget.jobs_needed(1, 5, 300))        # the margin eats the whole job


def _config(**train):
    return {"base_models": {"g": {"source": "hub", "hub_id": GEMMA}},
            "data": {"block_size": 2048, "heldout": ["a"], "heldout_max_tokens": 1000},
            "train": {"tokens": 10**9, "batch_tokens": 2**21, "micro_batch_size": 8, "gradient_checkpointing": True,
                      "loss_chunk_tokens": 4096, "deepspeed": "zero2.json", **train},
            "resources": {"train": {"nodes": 1, "gpus": 8, "runtime": 1440}}}


def _variants(*rows):
    columns = ["variant", "kind", "base", "init", "loops", "sharing", "rank", "kd", "tokens"]
    table = pd.DataFrame([dict(zip(columns, r)) for r in rows])
    return table.set_index("variant", drop=False)


VARIANTS = _variants(("orig", "original", "g", "-", 1, "-", "0", False, "0"),
                     ("full", "full", "g", "-", 1, "-", "0", False, "default"),
                     ("rec-kd", "recursive", "g", "average", 2, "cycle", "64", True, "2000000000"))


def test_plan_rows_hours_and_memory():
    table = budget.plan_budget(_config(), VARIANTS)
    orig, full, rec = (table.set_index("variant").loc[v] for v in ("orig", "full", "rec-kd"))
    assert orig.flops == 0 and orig.gpu_hours == 0 and pd.isna(orig.mem_peak_gb) and orig.warning == ""
    gemma = _size(GEMMA)
    per_token = budget.train_flops_per_token(gemma, 2048, checkpointing=True, chunked=True)
    assert full.flops == pytest.approx(1e9 * per_token)
    assert full.gpu_hours == pytest.approx(full.flops / (H100 * 0.4) / 3600)
    assert full.wall_hours == pytest.approx(full.gpu_hours / 8)
    p = gemma["params"]
    assert full.mem_weights_gb == pytest.approx(4 * p / 1e9)
    assert full.mem_grads_gb + full.mem_optimizer_gb == pytest.approx(12 * p / 8 / 1e9)  # ZeRO-2 over 8
    assert full.mem_logits_gb == pytest.approx(4096 * 256000 * 12 / 1e9)
    assert full.checkpoint_gb == pytest.approx(28 * p / 1e9)
    assert rec.tokens == 2 * 10**9 and rec.params_non_embedding / 1e9 == pytest.approx(1.07, abs=0.005)
    assert rec.mem_teacher_gb == pytest.approx(2 * p / 1e9)
    assert rec.mem_logits_gb == pytest.approx(2 * full.mem_logits_gb)
    assert (table.warning == "").all()
    early_exit = _variants(("ee", "recursive", "g", "stepwise", 2, "cycle", "0", False, "default"))
    early_exit["early_exit"] = "aggressive_kd"
    ee = budget.plan_budget(_config(), early_exit).iloc[0]
    plain = budget.plan_budget(_config(), early_exit.assign(early_exit="-")).iloc[0]
    assert ee.flops - plain.flops == pytest.approx(1e9 * 12 * gemma["n_head"])
    assert ee.mem_logits_gb == pytest.approx(2 * full.mem_logits_gb)  # the final exit's chunk as KD target
    # A100 at half the MFU: 989/312 × 2 times the GPU-hours.
    slow = budget.plan_budget(_config(), VARIANTS, gpu="a100", mfu=0.2).set_index("variant")
    assert slow.loc["full", "gpu_hours"] == pytest.approx(full.gpu_hours * 989 / 312 * 2)
    assert table.attrs["data"]["g"]["train_tokens"] == 2 * 10**9


def test_a_dlt_row_holds_its_budget_of_layers_and_computes_every_depth():
    """Dynamic Layer Tying under a budget K holds (and updates) K unique layers but runs all
    L depths: the parameters and memory of the CYCLE model with K = L/B unique layers, the
    compute of the full model, on one GPU with nothing partitioned (one process: a retie
    changes the parameters). Without a budget it is costed as untied, with a note."""
    table = _variants(("full", "full", "g", "-", 1, "-", "0", False, "default"),
                      ("rec", "recursive", "g", "stepwise", 2, "cycle", "0", False, "default"),
                      ("dlt-k9", "dlt", "g", "-", 1, "-", "0", False, "default"),
                      ("dlt", "dlt", "g", "scratch", 1, "-", "0", False, "default"))
    table["dlt_max_unique"] = ["-", "-", "9", "-"]
    plan = budget.plan_budget(_config(), table).set_index("variant")
    k9, rec, full, free = plan.loc["dlt-k9"], plan.loc["rec"], plan.loc["full"], plan.loc["dlt"]
    assert (k9.params, k9.params_non_embedding) == (rec.params, rec.params_non_embedding)  # Gemma: 18 = 9 x 2
    assert k9.flops == full.flops and k9.gpu_hours == full.gpu_hours and k9.depths == 18
    assert k9.wall_hours == k9.gpu_hours and full.wall_hours == pytest.approx(full.gpu_hours / 8)
    assert k9.mem_weights_gb == rec.mem_weights_gb
    assert k9.mem_grads_gb + k9.mem_optimizer_gb == pytest.approx(12 * rec.params / 1e9)  # no ZeRO
    assert (free.params, free.flops) == (full.params, full.flops)
    assert free.mem_optimizer_gb == pytest.approx(8 * full.params / 1e9)
    assert any("without dlt_max_unique are costed as the untied model" in n for n in plan.attrs["notes"])
    assert any("dlt rows run on one GPU" in n for n in plan.attrs["notes"])
    table["dlt_max_unique"] = ["-", "-", "19", "-"]
    with pytest.raises(UsageError, match=r"base model 'g': dlt_max_unique 19 is not in 1\.\.18"):
        budget.plan_budget(_config(), table)


def test_memory_and_runtime_warnings():
    huge = budget.plan_budget(_config(micro_batch_size=1024, batch_tokens=2**31, loss_chunk_tokens=None), VARIANTS)
    assert huge.set_index("variant").loc["full", "warning"].startswith("peak ")
    assert huge.set_index("variant").loc["orig", "warning"] == ""
    config = _config(stop_margin_s=3600)
    config["resources"]["train"]["runtime"] = 60
    short = budget.plan_budget(config, VARIANTS).set_index("variant")
    assert "runtime 60 min <= stop margin 60 min" in short.loc["full", "warning"]
    assert pd.isna(short.loc["full", "jobs"])


def test_no_gpus_plans_for_one():
    config = _config()
    config["resources"]["train"]["gpus"] = 0
    table = budget.plan_budget(config, VARIANTS)
    assert table.attrs["gpus"] == 1 and "planned for 1 GPU" in table.attrs["notes"][0]
    assert "planned for 1 GPU" in budget.format_plan(table)


# --- several nodes ----------------------------------------------------------------------------
TINY_LLAMA = LlamaConfig(vocab_size=64, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)


def _multi_node(nodes: int, gbps: float | None = None, deepspeed: str | None = "zero2.json"):
    config = {"base_models": {"t": {"source": "tiny"}},
              "data": {"block_size": 16, "heldout": ["a"], "heldout_max_tokens": 100},
              "train": {"tokens": 1280, "batch_tokens": 128, "micro_batch_size": 1, "deepspeed": deepspeed},
              "resources": {"train": {"nodes": nodes, "gpus": 8 // nodes, "runtime": 60}}}
    if gbps is not None:
        config["plan"] = {"internode_gbps": gbps}
    variants = _variants(("full", "full", "t", "-", 1, "-", "0", False, "default"))
    return budget.plan_budget(config, variants, base_configs={"t": TINY_LLAMA})


def test_internode_traffic_by_hand():
    """A 1-layer llama (P = 64·8 tied embedding + 4·8·8 attention + 3·8·16 MLP + 3·8 norms =
    1,176) on 2 nodes x 4 GPUs (G = 8), ZeRO-2 in bf16: each node sends
    2·(G−1)/G·P·2 = 2·7/8·1176·2 = 4,116 bytes per step; at 400 Gb/s that is
    4116·8 / 400e9 = 8.232e-8 s. A step of 128 tokens (one 16-token block per GPU) at
    3·(2·(640 + 512) + 2·1·16·8) = 7,680 FLOPs per token takes 128·7680 / (8 · 989e12 · 0.4)
    = 3.1062e-10 s of compute: communication bounds the step, 265.0 times longer."""
    row = _multi_node(2).iloc[0]
    assert row.params == 1176 and row.n_eff == 640 + 512
    assert budget.train_flops_per_token(budget.model_size(TINY_LLAMA, "full"), 16, checkpointing=False,
                                        chunked=False) == 7680
    assert budget.internode_bytes_per_step(1176, 2, 4, 2) == 4116
    assert row.comm_gb_per_step * 1e9 == pytest.approx(4116)
    assert row.comm_s == pytest.approx(8.232e-8)
    assert row.step_s == pytest.approx(128 * 7680 / (8 * 989e12 * 0.4))
    assert row.step_s == pytest.approx(3.1062e-10, rel=1e-4)
    compute_hours = 1280 * 7680 / (989e12 * 0.4) / 3600 / 8
    assert row.gpu_hours == pytest.approx(compute_hours * 8)
    assert row.wall_hours == pytest.approx(compute_hours * 8.232e-8 / (128 * 7680 / (8 * 989e12 * 0.4)))
    assert row.wall_hours / compute_hours == pytest.approx(265.0, abs=0.05)
    assert row.warning == "inter-node traffic 8.23e-08 s/step > compute 3.11e-10 s/step at 400 Gb/s per node"
    # Without DeepSpeed, DDP all-reduces the fp32 gradients: twice the bytes.
    assert _multi_node(2, deepspeed=None).iloc[0].comm_gb_per_step * 1e9 == pytest.approx(8232)
    # Links fast enough (4116·8 / 3.1062e-10 s = 1.06e5 Gb/s and above): compute bounds the step.
    fast = _multi_node(2, gbps=2e5).iloc[0]
    assert fast.comm_s == pytest.approx(4116 * 8 / 2e14) and fast.comm_s < fast.step_s
    assert fast.wall_hours == pytest.approx(compute_hours) and fast.warning == ""
    # 4 nodes x 2 GPUs: the same G = 8, so the same bytes per node; one node: none.
    assert _multi_node(4).iloc[0].comm_gb_per_step * 1e9 == pytest.approx(4116)
    one = _multi_node(1).iloc[0]
    assert one.comm_gb_per_step == 0 and one.comm_s == 0 and one.wall_hours == pytest.approx(compute_hours)
    assert budget.internode_bytes_per_step(1176, 1, 8, 2) == 0


def test_format_plan_shows_the_multi_node_view():
    text = budget.format_plan(_multi_node(2))
    assert "between nodes: 400 Gb/s per node (plan.internode_gbps)" in text
    assert "comm-s" in text.splitlines()[4] and "8.23e-08" in text
    assert "warning: 1 variant(s) flagged" in text
    assert "comm-s" not in budget.format_plan(_multi_node(1))  # one node: no inter-node columns


# --- the command ----------------------------------------------------------------------------
def test_rrt_plan_on_the_shipped_configs():
    """`rrt plan` prints a row per variant of the paper and the embedded configs (in parallel:
    each run imports torch)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rrt = str(Path(sys.executable).with_name("rrt"))
    runs = {name: subprocess.Popen([rrt, "plan", "--config", f"config/{name}.yaml"], cwd=ROOT, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for name in ("paper", "config")}
    for name, run in runs.items():
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err[-2000:]
        lines = out.splitlines()
        variants = read_variants(ROOT / f"config/{'paper_variants' if name == 'paper' else 'variants'}.tsv")
        for variant in variants.index:
            assert any(line.split()[:1] == [variant] for line in lines), (name, variant)
        assert any(line.startswith("total: ") for line in lines)


def test_plan_writes_csv_and_json(tmp_path, capsys):
    (tmp_path / "v.tsv").write_text("variant\tkind\tbase\tinit\tloops\tsharing\trank\tkd\ttokens\n"
                                    "full\tfull\tg\t-\t1\t-\t0\tfalse\tdefault\n"
                                    "rec\trecursive\tg\taverage\t2\tcycle\t0\tfalse\tdefault\n")
    (tmp_path / "c.yaml").write_text(f"variants: {tmp_path / 'v.tsv'}\n"
                                     f"base_models: {{g: {{source: hub, hub_id: {GEMMA}}}}}\n"
                                     "plan: {gpu: a100}\n")
    assert main(["plan", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "p.csv")]) == 0
    printed = capsys.readouterr().out
    assert "on a100" in printed and "planned for 1 GPU" in printed
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table.variant) == ["full", "rec"] and table.params_non_embedding[1] / 1e9 == pytest.approx(0.99, abs=0.01)
    assert main(["plan", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "p.json"), "--mfu", "0.5"]) == 0
    assert '"mfu": 0.5' in (tmp_path / "p.json").read_text()


@pytest.mark.parametrize("argv,match", [
    (["--config", "nope.yaml"], "--config nope.yaml does not exist"),
    (["--config", "config/paper.yaml", "--mfu", "0"], "--mfu must be in (0, 1], got 0.0"),
    (["--config", "config/paper.yaml", "--mfu", "1.5"], "--mfu must be in (0, 1], got 1.5"),
    (["--config", "config/paper.yaml", "--out", "plan.txt"], "--out plan.txt: must end in .csv or .json"),
])
def test_bad_input(argv, match, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert match in cli_error(capsys, ["plan", *argv])


def test_plan_flags_are_the_plan_settings(capsys, monkeypatch, tmp_path):
    """--gpu/--mfu/--internode-gbps come from PlanSettings: an unknown GPU is argparse's
    choice error; a flag given overrides the config's plan section (paper.yaml: h100)."""
    from rrt.cli import main

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--config", "config/paper.yaml", "--gpu", "v100"])
    assert exit_.value.code == 2 and "argument --gpu: invalid choice: 'v100'" in capsys.readouterr().err
    out = tmp_path / "plan.json"
    assert main(["plan", "--config", "config/paper.yaml", "--gpu", "a100", "--internode-gbps", "100",
                 "--out", str(out)]) == 0
    assumptions = json.loads(out.read_text())["assumptions"]
    assert (assumptions["gpu"], assumptions["mfu"], assumptions["internode_gbps"]) == ("a100", 0.4, 100.0)


def test_bad_config_values_name_the_key(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("variants: config/variants.tsv\nbase_models: {g: {source: embedded}}\nplan: {mfu: 2}\n")
    assert f"{path}: plan.mfu must be in (0, 1], got 2.0" in cli_error(capsys, ["plan", "--config", str(path)])
    path.write_text("variants: config/variants.tsv\nbase_models: {g: {source: embedded}}\nplan: {internode_gbps: 0}\n")
    assert f"{path}: plan.internode_gbps must be a finite number > 0, got 0.0" in cli_error(
        capsys, ["plan", "--config", str(path)])
    path.write_text(f"variants: {tmp_path / 'none.tsv'}\nbase_models: {{g: {{source: embedded}}}}\n")
    assert "none.tsv does not exist" in cli_error(capsys, ["plan", "--config", str(path)])
