"""`rrt export`: a self-contained directory that plain transformers loads with
trust_remote_code=True in a process that cannot import rrt, an unrolled plain checkpoint of
the base family with the recursive model's logits, no pickles in any model directory we
write, and the real `lm_eval` command line on both exports scoring as `rrt eval` does."""
import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tokenizers import models as tok_models
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from rrt.cli import main
from rrt.model import base_models
from rrt.model.convert import convert
from rrt.model.export_remote import AUTO_MAP, remote_code_files, save_self_contained
from rrt.model.export_unrolled import unroll
from rrt.model.families import family_of

from .conftest import FAMILIES, VOCAB, cli_error, make_tiny
from .test_train import BLOCK, save_blocks
from .train_run import train

# (sharing, rank, per-depth norms): pure sharing, relaxed cycle, relaxed sequence with own norms.
VARIANTS = [("cycle", "0", False), ("cycle", "4", False), ("sequence", "4", True)]
REMOTE_FILES = ["modeling_rrt.py", "rrt_binding.py", "rrt_families.py", "rrt_families_gemma.py",
                "rrt_families_gemma2.py", "rrt_families_gemma3.py", "rrt_families_gpt_neox.py",
                "rrt_families_llama.py", "rrt_families_spec.py", "rrt_relax.py", "rrt_settings.py", "rrt_sharing.py"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json"]
# A process that cannot import rrt: sitecustomize (first on PYTHONPATH) blocks the package.
NO_RRT = "import sys\nsys.modules['rrt'] = None  # `import rrt` raises ImportError\n"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _recursive(family, sharing="cycle", rank="4", per_depth_norms=False):
    return convert(make_tiny(family), loops=2, init="average", sharing=sharing, rank=rank,
                   per_depth_norms=per_depth_norms).eval()


def _no_rrt_env(tmp_path) -> dict:
    """Environment of a subprocess that cannot import rrt (and keeps its remote code in tmp)."""
    blocker = tmp_path / "no_rrt"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(NO_RRT)
    return {**os.environ, "PYTHONPATH": str(blocker), "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _tokenizer():
    vocab = {f"t{i}": i for i in range(VOCAB)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel(vocab, unk_token="t0")))


# --- self-contained (remote code) ---------------------------------------------------------
def test_remote_code_is_generated_from_the_package():
    files = remote_code_files()
    assert sorted(files) == REMOTE_FILES
    flat = {name.removesuffix(".py") for name in files}
    for name, text in files.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level:  # only flat imports of the files beside it
                assert node.level == 1 and node.module in flat, (name, ast.unparse(node))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert not any(m.split(".")[0] == "rrt" for m in mods), (name, ast.unparse(node))
    assert "from .rrt_relax import DepthLinear" in files["modeling_rrt.py"]
    assert "from .rrt_settings import INITS, SHARINGS" in files["rrt_sharing.py"]
    assert "SHARINGS = ('cycle', 'sequence', 'middle')" in files["rrt_settings.py"]
    # The classes of the package, verbatim apart from the import lines.
    source = (Path(__file__).resolve().parents[1] / "src/rrt/model/relax.py").read_text()
    assert files["rrt_relax.py"].endswith(source)


def test_self_contained_exports_load_without_rrt(tmp_path, ids):
    """Every family, pure sharing and relaxed (cycle, sequence + own norms): plain
    transformers in a process where `import rrt` fails gives the original's logits."""
    cases, generated = {}, {}
    for family in FAMILIES:
        for sharing, rank, norms in VARIANTS:
            name = f"{family}-{sharing}-{rank}-{int(norms)}"
            model = _recursive(family, sharing, rank, norms)
            save_self_contained(model, tmp_path / name)
            with torch.no_grad():
                cases[name] = model(ids).logits
            if rank == "4" and sharing == "cycle":  # greedy generate() through the remote code, with its cache
                generated[name] = model.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6,
                                                 pad_token_id=0)[:, ids.shape[1]:]
    save_file({"ids": ids}, tmp_path / "ids.safetensors")
    script = textwrap.dedent(f"""
        import sys, torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModelForCausalLM
        try:
            import rrt
            sys.exit("rrt is importable")
        except ImportError:
            pass
        torch.set_num_threads(1)
        ids = load_file({str(tmp_path / 'ids.safetensors')!r})["ids"]
        out = {{}}
        for name in {sorted(cases)!r}:
            model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True,
                                                         dtype=torch.float32).eval()
            assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
            with torch.no_grad():
                out[name] = model(ids).logits.contiguous()
            if name in {sorted(generated)!r}:
                out[name + ":generated"] = model.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6,
                                                          pad_token_id=0)[:, ids.shape[1]:].contiguous()
        assert not [m for m in sys.modules if m.startswith("rrt.")]
        save_file(out, {str(tmp_path / 'logits.safetensors')!r})
    """)
    run = subprocess.run([sys.executable, "-c", script], env=_no_rrt_env(tmp_path), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    got = load_file(tmp_path / "logits.safetensors")
    assert sorted(got) == sorted([*cases, *(f"{name}:generated" for name in generated)])
    for name, logits in cases.items():
        assert (got[name] - logits).abs().max().item() <= 1e-6, name
    assert len(generated) == len(FAMILIES)
    for name, tokens in generated.items():
        assert torch.equal(got[f"{name}:generated"], tokens), name


def test_self_contained_export_also_loads_beside_rrt(tmp_path, ids):
    """In a process that imported rrt (the `recursive` type registered), the remote code
    loads too (its module does not register the type a second time)."""
    model = _recursive("gemma2")
    save_self_contained(model, tmp_path / "out")
    assert json.loads((tmp_path / "out/config.json").read_text())["auto_map"] == AUTO_MAP
    assert "auto_map" not in model.config.to_dict()  # the model itself is left as it was
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


# --- unrolled ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sharing,rank,norms", VARIANTS)
def test_unrolled_export_is_the_recursive_model(family, sharing, rank, norms, tmp_path, ids):
    model = _recursive(family, sharing, rank, norms)
    unroll(model).save_pretrained(tmp_path / "plain")
    config = json.loads((tmp_path / "plain/config.json").read_text())
    assert config["model_type"] == model.config.text_config.model_type and "auto_map" not in config
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    assert type(loaded) is family_of(model.config.text_config).causal_lm_cls(model.config.text_config)
    assert loaded.config.num_hidden_layers == 6 and len(model.recursive_block) == 3
    with torch.no_grad():
        diff = (loaded(ids).logits - model(ids).logits).abs().max().item()
    assert diff <= 1e-4, diff
    # It costs the saving: 6 stored layers where the recursive model stores 3 (and LoRA).
    layers = family_of(loaded.config).layers_path
    assert sum(p.numel() for p in loaded.get_submodule(layers).parameters()) == \
        6 * sum(p.numel() for p in make_tiny(family).get_submodule(layers)[0].parameters())


def test_unrolled_depth_is_shared_weight_plus_its_lora():
    model = _recursive("llama", rank="4")
    plain = unroll(model)
    layer = model.depth_layers[4]  # slot 1, second loop
    own = layer.linears["mlp__down_proj"]
    expected = layer.block.mlp.down_proj.weight + own.scale * own.lora_B @ own.lora_A
    torch.testing.assert_close(plain.model.layers[4].mlp.down_proj.weight, expected, rtol=0, atol=1e-6)
    assert not torch.equal(plain.model.layers[4].mlp.down_proj.weight, plain.model.layers[1].mlp.down_proj.weight)


# --- the command line ---------------------------------------------------------------------
@pytest.fixture
def rec_dir(tmp_path):
    path = tmp_path / "rec"
    _recursive("llama", rank="4").save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path


def test_cli_exports_both_ways(rec_dir, tmp_path, ids, capsys):
    original = AutoModelForCausalLM.from_pretrained(rec_dir).eval()
    remote, plain = tmp_path / "remote", tmp_path / "plain"
    assert main(["export", str(rec_dir), "--out", str(remote)]) == 0
    assert main(["export", str(rec_dir), "--out", str(plain), "--unrolled"]) == 0
    printed = capsys.readouterr().out
    assert "unrolled: a plain llama model of 6 layers" in printed and "trust_remote_code=True" in printed
    model_files = ["config.json", "generation_config.json", "model.safetensors"]
    assert sorted(p.name for p in remote.iterdir()) == sorted(model_files + REMOTE_FILES + TOKENIZER_FILES)
    assert sorted(p.name for p in plain.iterdir()) == sorted(model_files + TOKENIZER_FILES)
    with torch.no_grad():
        want = original(ids).logits
        got_remote = AutoModelForCausalLM.from_pretrained(remote, trust_remote_code=True).eval()(ids).logits
        got_plain = AutoModelForCausalLM.from_pretrained(plain).eval()(ids).logits
    assert torch.equal(got_remote, want)
    assert (got_plain - want).abs().max().item() <= 1e-4


def test_cli_export_of_a_plain_model_writes_it_as_is(tmp_path, ids, capsys):
    base = make_tiny("gpt_neox")
    base.save_pretrained(tmp_path / "base")
    (tmp_path / "base" / "training_args.bin").write_bytes(b"not for export")
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "base"), "--out", str(out), "--unrolled"]) == 0
    assert "is a plain gpt_neox model: written as is" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits, base(ids).logits)


def test_cli_export_errors_are_one_line_and_write_nothing(rec_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert "does not exist" in cli_error(capsys, ["export", str(tmp_path / "nope"), "--out", str(out)])
    (tmp_path / "taken").mkdir()
    assert "already exists" in cli_error(capsys, ["export", str(rec_dir), "--out", str(tmp_path / "taken")])
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    err = cli_error(capsys, ["export", str(rec_dir), "--out", str(out), "--push-to-hub", "me/rrt"])
    assert err.startswith("rrt export: error: --push-to-hub: HF_HUB_OFFLINE is set"), err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec", "taken"]


# --- no pickles -----------------------------------------------------------------------------
def test_final_model_directory_holds_no_pickles(tmp_path):
    base = tmp_path / "base"
    make_tiny("llama", layers=4).save_pretrained(base)
    _tokenizer().save_pretrained(base)
    out = tmp_path / "out"
    train(base, save_blocks(tmp_path / "data", 4), out, max_tokens=2 * BLOCK, batch_tokens=2 * BLOCK,
          micro_batch_size=2, save_steps=1, progress=False)
    files = sorted(p.name for p in (out / "final").iterdir())
    assert files == sorted(["config.json", "generation_config.json", "model.safetensors", *TOKENIZER_FILES])


# --- the lm_eval command line ---------------------------------------------------------------
def _lm_eval(model_dir: Path, include: Path, out: Path, env: dict, limit: int) -> subprocess.Popen:
    args = f"pretrained={model_dir},trust_remote_code=True,dtype=float32"
    cmd = [str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args", args,
           "--tasks", "rrt_arc_easy,rrt_winogrande", "--include_path", str(include), "--limit", str(limit),
           "--batch_size", "4", "--output_path", str(out), "--log_samples"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _lm_eval_scores(out: Path) -> dict:
    (results,) = out.rglob("results_*.json")
    scores = {}
    for name, metrics in json.loads(results.read_text())["results"].items():
        task = name.removeprefix("rrt_")
        scores[task] = {k.split(",")[0]: v for k, v in metrics.items() if k.split(",")[0] in ("acc", "acc_norm")}
        (samples,) = out.rglob(f"samples_{name}_*.jsonl")
        rows = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda r: r["doc_id"])
        for key in list(scores[task]):
            scores[task][f"{key}_items"] = [float(r[key]) for r in rows]
        scores[task]["loglikelihoods"] = [[float(resp[0][0]) for resp in r["resps"]] for r in rows]
    return scores


# lm_eval's own CLI on both exports (~1.5 CPU-min): CI's slow stage. Fast: the exports load
# without rrt and equal the recursive model (above), and rrt eval's lm-eval path (test_evaluate.py).
@pytest.mark.slow
def test_lm_eval_cli_on_exports_scores_as_rrt_eval(tmp_path, capsys):
    """The real `lm_eval` command (a process that cannot import rrt), on the self-contained
    and the unrolled export of a relaxed recursive model: the same task scores, item by item,
    as `rrt eval` on the original directory."""
    limit = 8
    base_models.tiny_model(tmp_path / "base", layers=4, hidden_size=32)
    rec = tmp_path / "rec"
    assert main(["convert", "--base", str(tmp_path / "base"), "--out", str(rec), "--init", "average",
                 "--loops", "2", "--rank", "4"]) == 0
    exports = {"remote": tmp_path / "remote", "unrolled": tmp_path / "unrolled"}
    assert main(["export", str(rec), "--out", str(exports["remote"])]) == 0
    assert main(["export", str(rec), "--out", str(exports["unrolled"]), "--unrolled"]) == 0
    # The task files `rrt eval --workdir` writes (and reads): the same YAML and documents.
    workdir = tmp_path / "tasks"
    assert main(["eval", "--model", str(rec), "--out", str(tmp_path / "rec.json"), "--tasks", "arc_easy,winogrande",
                 "--limit", str(limit), "--batch-size", "4", "--workdir", str(workdir), "--threads", "1"]) == 0
    env = _no_rrt_env(tmp_path)
    runs = {k: _lm_eval(d, workdir, tmp_path / f"lm_eval_{k}", env, limit) for k, d in exports.items()}
    for kind, run in runs.items():
        output = run.communicate(timeout=600)[0]
        assert run.returncode == 0, f"{kind}: {output[-3000:]}"
    ours = json.loads((tmp_path / "rec.json").read_text())["tasks"]
    theirs = {k: _lm_eval_scores(tmp_path / f"lm_eval_{k}") for k in exports}
    for task in ("arc_easy", "winogrande"):
        metrics = ("acc", "acc_norm") if task == "arc_easy" else ("acc",)
        for kind in exports:
            got = theirs[kind][task]
            for m in metrics:
                assert got[m] == ours[task][m], (kind, task, m)
                assert got[f"{m}_items"] == ours[task]["items"][m], (kind, task, m)
        # Same log-likelihoods too: remote code exactly as the model, unrolled up to rounding.
        remote, unrolled = theirs["remote"][task]["loglikelihoods"], theirs["unrolled"][task]["loglikelihoods"]
        assert len(remote) == limit
        assert max(abs(a - b) for ra, rb in zip(remote, unrolled) for a, b in zip(ra, rb)) <= 1e-4
