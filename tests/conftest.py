import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Under pytest-xdist (`make test` runs `-n 2`) each worker gets its share of the cores, for
# torch here and for the processes the tests start (rrt, snakemake jobs): N workers each
# using every core would oversubscribe the machine and run slower than one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

import rrt  # noqa: E402,F401

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

VOCAB = 96
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_attention_heads=4,
               max_position_embeddings=64)


def _configs(layers: int):
    return {
        "llama": (LlamaForCausalLM, LlamaConfig(**_COMMON, num_key_value_heads=2, num_hidden_layers=layers,
                                                tie_word_embeddings=True)),
        "gemma": (GemmaForCausalLM, GemmaConfig(**_COMMON, num_key_value_heads=1, head_dim=16,
                                                num_hidden_layers=layers)),
        # Sliding window 4 < test sequence length, so local and global depths differ.
        "gemma2": (Gemma2ForCausalLM, Gemma2Config(**_COMMON, num_key_value_heads=2, head_dim=16,
                                                   num_hidden_layers=layers, sliding_window=4)),
        # Pattern 4 puts sliding and global depths on the same slot under cycle sharing.
        "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig(**_COMMON, num_key_value_heads=2, head_dim=16,
                                                        num_hidden_layers=layers, sliding_window=4,
                                                        sliding_window_pattern=4)),
        "gpt_neox": (GPTNeoXForCausalLM, GPTNeoXConfig(**_COMMON, num_hidden_layers=layers)),
    }


FAMILIES = list(_configs(2))


def make_tiny(family: str, layers: int = 6, seed: int = 0):
    """A small random model of `family` whose norms and biases differ from layer to layer
    (fresh init makes them all equal, which would hide per-depth bugs)."""
    torch.manual_seed(seed)
    cls, config = _configs(layers)[family]
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.fixture
def ids():
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


def _shared_once(tmp_path_factory, name: str, make):
    """`make(path)` run once per test session, also under pytest-xdist: the workers share one
    directory (the first to get the lock writes it, the others wait and reuse it)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's base, above every worker's own
    path = root / "shared" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            partial = path.with_name(path.name + ".partial")  # never a half-written `path`
            make(partial)
            partial.rename(path)
    return path


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The embedded SmolLM2-135M as an fp32 HF directory (materialised once per session, ~40 s)."""
    from rrt.model.base_models import materialize

    return _shared_once(tmp_path_factory, "smollm2-135m", materialize)


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory):
    """The tokenizer of `smollm2_dir`, without materialising the weights: the same files
    (`materialize` saves `embedded_tokenizer()`), read back the same way."""
    from transformers import AutoTokenizer

    from rrt.model.base_models import embedded_tokenizer

    path = _shared_once(tmp_path_factory, "smollm2-tokenizer", lambda out: embedded_tokenizer().save_pretrained(out))
    return AutoTokenizer.from_pretrained(path)


def cli_error(capsys, argv, code=2, progress_ok=False) -> str:
    """Run `rrt argv`, expect exit `code` and a one-line error on stderr; return that line.
    progress_ok: progress-bar lines (model loading) may precede the error line."""
    from rrt.cli import main

    capsys.readouterr()
    assert main(list(argv)) == code
    lines = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    if progress_ok:
        assert [line for line in lines if "error" in line] == lines[-1:], lines
    else:
        assert len(lines) == 1, lines
    return lines[-1]


@pytest.fixture
def tiny_real_vocab_dir(smollm2_tokenizer, tmp_path):
    """A random 2-layer llama over the real tokenizer: real prompts, chance-level answers."""
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(0)
    path = tmp_path / "tiny"
    LlamaForCausalLM(config).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


def train_settings_in(line: str) -> dict:
    """The `rrt ... --settings JSON` of a planned command line (`snakemake -n -p`): uptrain's,
    evaluate's, ..."""
    import json
    import shlex

    argv = shlex.split(line.removeprefix("Shell command: "))
    return json.loads(argv[argv.index("--settings") + 1])


# Under pytest-xdist (`make test`: --dist loadfile --no-loadscope-reorder) a free worker takes
# the next file in this order. The longest files (whole Snakemake runs, training) go first,
# then the rest by number of tests, so no worker is left alone with a long file at the end.
# (from `pytest --durations`: the workflow run ~260 s, lm_eval on exports ~180 s, shard jobs
# ~190 s, early-exit training ~100 s, the parity runs ~75 s, under load)
LONGEST_FIRST = ("test_workflow.py", "test_shard_workflow.py", "test_export.py", "test_exits.py",
                 "test_exit_eval.py", "test_checkpoints.py", "test_parity.py", "test_train.py", "test_time_limit.py",
                 "test_sharded_resume.py")


def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):  # only on xdist workers: a plain run keeps its order
        return
    per_file = {}
    for item in items:
        per_file[item.path.name] = per_file.get(item.path.name, 0) + 1

    def rank(item):
        name = item.path.name
        return (LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST), -per_file[name], name)

    items.sort(key=rank)  # stable: tests keep their order within a file
