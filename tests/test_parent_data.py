"""Post-training on new data (`parent_data`): a run with `data_after` leaves out the blocks
the runs before it drew, on a real token store (SlimPajama-layout files, shards, gather);
the blocks a run draws are read off the model's inputs, so the test holds whatever the
Trainer's sampler does."""
import csv

import numpy as np
import pytest

from rrt.data.blocks import TokenBlocks, blocks_left_after, seeded_order
from rrt.data.shards import write_mirror
from rrt.train import trainer as trainer_module

from .conftest import make_tiny
from .test_data import word_tokenizer, words
from .test_shards import make_corpus_dir, tokenize_n
from .test_train import CrashAfterSave, Interrupted, one_thread  # noqa: F401  (autouse fixture)
from .train_run import train

BLOCK = 16
STEP = 4 * BLOCK                  # 2 blocks per micro-batch, 2 micro-batches per step
RUN = dict(batch_tokens=STEP, micro_batch_size=2, lr=1e-3, seed=3, progress=False)
PARENT, CHILD = 6 * STEP, 4 * STEP  # 24 and 16 blocks


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tokenized train split (2 shards gathered) of random word documents, and a tiny llama."""
    root = tmp_path_factory.mktemp("store")
    tok = word_tokenizer(root / "tok")
    rng = np.random.default_rng(0)
    docs = [("src", words(*rng.integers(0, 50, rng.integers(3, 40)))) for _ in range(120)]
    write_mirror(root / "mirror", docs, files=4, chunks=2)
    out = tokenize_n(root, root / "mirror", make_corpus_dir(root / "corpus"), tok, 2, BLOCK)
    make_tiny("llama", layers=2).save_pretrained(root / "model")
    return root / "model", out / "train"


@pytest.fixture
def drawn(monkeypatch):
    """The token rows of every micro-batch the runs train on, in order."""
    rows = []
    compute_loss = trainer_module.UptrainTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        rows.extend(tuple(r) for r in inputs["input_ids"].tolist())
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(trainer_module.UptrainTrainer, "compute_loss", recording)
    return rows


def block_ids(data_dir, rows) -> list[int]:
    """The store's block index of each row (the store's blocks are all different)."""
    blocks = TokenBlocks(data_dir)
    index = {tuple(blocks[b]["input_ids"].tolist()): b for b in range(len(blocks))}
    assert len(index) == len(blocks)
    return [index[r] for r in rows]


def test_new_data_is_disjoint_from_the_parents_and_overlap_is_the_same(store, drawn, tmp_path):
    model, data = store
    n = len(TokenBlocks(data))
    assert n >= 2 * (PARENT + CHILD) // BLOCK, n
    train(model, data, tmp_path / "parent", max_tokens=PARENT, **RUN)
    parent = block_ids(data, drawn)
    # the parent draws the first 24 of the seeded order: what data_after leaves out
    assert len(parent) == PARENT // BLOCK and set(parent) == set(seeded_order(n, 3)[:PARENT // BLOCK])

    drawn.clear()
    summary = train(tmp_path / "parent" / "final", data, tmp_path / "new", max_tokens=CHILD, data_after=[PARENT],
                    **RUN)
    assert summary["config"]["data_after"] == [PARENT]  # recorded with the run
    new = block_ids(data, drawn)
    assert len(new) == len(set(new)) == CHILD // BLOCK
    assert not set(new) & set(parent)
    assert set(new) <= set(blocks_left_after(n, 3, [PARENT // BLOCK]))

    drawn.clear()  # overlap: the same order as the parent, so its first 16 blocks
    train(tmp_path / "parent" / "final", data, tmp_path / "overlap", max_tokens=CHILD, **RUN)
    overlap = block_ids(data, drawn)
    assert overlap == parent[:CHILD // BLOCK]
    train(tmp_path / "parent" / "final", data, tmp_path / "overlap-all", max_tokens=PARENT, **RUN)
    assert block_ids(data, drawn[CHILD // BLOCK:]) == parent  # the parent's budget: its very blocks

    drawn.clear()  # a chain: the grandchild leaves out the parent's and the child's blocks
    train(tmp_path / "new" / "final", data, tmp_path / "chain", max_tokens=CHILD, data_after=[PARENT, CHILD], **RUN)
    chain = block_ids(data, drawn)
    assert len(chain) == CHILD // BLOCK and not set(chain) & (set(parent) | set(new))


def test_not_enough_blocks_left_is_a_one_line_error(store, tmp_path):
    model, data = store
    n = len(TokenBlocks(data))
    before = (n - 8) // 4 * 4  # whole steps of 4 blocks
    with pytest.raises(ValueError) as caught:
        train(model, data, tmp_path / "out", max_tokens=CHILD, data_after=[before * BLOCK], **RUN)
    text = str(caught.value)
    assert text == (f"new data: the store holds {n} blocks, the runs before drew {before}, {n - before} are left "
                    f"and this run needs {CHILD // BLOCK}"), text
    with pytest.raises(ValueError, match=f"new data: the store holds {n} blocks: run 1 of 1 before this one drew "
                                         f"{before + 12} blocks, but only {n} of {n} were left"):
        train(model, data, tmp_path / "out", max_tokens=CHILD, data_after=[(before + 12) * BLOCK], **RUN)
    assert not (tmp_path / "out" / "final").exists()


def test_a_killed_post_training_on_new_data_resumes_the_same_run(store, tmp_path):
    """Cut after its step-2 checkpoint, the run on new data continues to the uninterrupted
    run's loss.csv; another data_after is another run, refused."""
    model, data = store
    settings = dict(max_tokens=CHILD, data_after=[PARENT], save_steps=2, warmup_steps=1, **RUN)
    train(model, data, tmp_path / "whole", **settings)
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        train(model, data, cut, callbacks=[CrashAfterSave(2)], **settings)
    with pytest.raises(ValueError, match=r"data_after=\[384\], not None"):
        train(model, data, cut, **{**settings, "data_after": []})
    assert train(model, data, cut, **settings)["resumed_from_step"] == 2
    rows = [list(csv.DictReader(open(d / "loss.csv"))) for d in (tmp_path / "whole", cut)]
    assert len(rows[0]) == len(rows[1]) == CHILD // STEP
    for a, b in zip(*rows):
        assert a["tokens_seen"] == b["tokens_seen"]
        for key in ("loss", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6, abs=1e-7), (a["step"], key)
