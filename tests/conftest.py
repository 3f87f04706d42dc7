import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The embedded SmolLM2-135M as an fp32 HF directory (materialised once per session, ~40 s)."""
    from rrt.model.base_models import materialize

    return materialize(tmp_path_factory.mktemp("models") / "smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


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
    """The `rrt train --settings JSON` of a planned uptrain command line (`snakemake -n -p`)."""
    import json
    import shlex

    argv = shlex.split(line.removeprefix("Shell command: "))
    return json.loads(argv[argv.index("--settings") + 1])
