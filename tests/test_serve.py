"""The depth-wise batching engine (`rrt.serve`): its greedy tokens are transformers'
`generate` tokens, whatever the batch around a request, and its cache does not grow."""
import pytest
import torch

from rrt.model.convert import convert
from rrt.serve.engine import DepthwiseEngine
from rrt.serve.hf import hf_generate

from .conftest import FAMILIES, VOCAB, make_tiny

NEW = 10


def _prompts(lengths=(5, 9, 3, 12, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _models():
    base = make_tiny("llama", layers=6)
    return {"plain": base, "recursive": convert(base, loops=2, init="stepwise").eval(),
            "relaxed": convert(base, loops=3, init="average", rank=4).eval()}


@pytest.fixture(scope="module")
def models():
    return _models()


@pytest.mark.parametrize("kind", ["plain", "recursive", "relaxed"])
def test_engine_tokens_are_generates_tokens(models, kind):
    """5 prompts of different lengths through 2 sequence slots: later requests join as
    earlier ones finish (staggered), rows at different loops share every step."""
    model = models[kind]
    prompts = _prompts()
    reference = [hf_generate(model, [p], NEW)[0] for p in prompts]
    engine = DepthwiseEngine(model, max_batch=2, max_len=32)
    done = engine.generate(prompts, NEW)
    assert [r.tokens for r in done] == reference
    loops = 1 if kind == "plain" else model.config.num_loops
    assert all(r.exit_loops == [loops] * NEW for r in done)
    assert engine.cache.free == [0, 1]  # every slot given back


@pytest.mark.parametrize("kind", ["plain", "relaxed"])
def test_prompts_prefilled_together_match_generate(models, kind):
    """Every request joins at once: prompts of 3 to 12 tokens prefilled as one right-padded
    batch (pad positions' KV is overwritten before any query reaches it)."""
    model = models[kind]
    prompts = _prompts()
    done = DepthwiseEngine(model, max_batch=len(prompts), max_len=32).generate(prompts, NEW)
    assert [r.tokens for r in done] == [hf_generate(model, [p], NEW)[0] for p in prompts]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "llama"])  # llama: the tests above
def test_other_families_match_generate(family):
    """Gemma's scaled embedding; Gemma 2/3's sliding (window 4) and global depths sharing a
    slot (B=2), Gemma 3's rotary per attention type: rows pick theirs; GPT-NeoX's parallel
    residual, fused QKV and biases."""
    model = convert(make_tiny(family, layers=4), loops=2, init="stepwise", rank=4).eval()
    prompts = _prompts(lengths=(5, 9, 3, 7))
    done = DepthwiseEngine(model, max_batch=2, max_len=32).generate(prompts, NEW)
    assert [r.tokens for r in done] == [hf_generate(model, [p], NEW)[0] for p in prompts]


def test_static_hf_batches_equal_one_prompt_at_a_time(models):
    """The reference itself: left-padded static batches give each prompt's own tokens."""
    model, prompts = models["recursive"], _prompts()
    assert hf_generate(model, prompts, NEW, batch_size=3) == [hf_generate(model, [p], NEW)[0] for p in prompts]


def test_a_request_gets_the_same_tokens_alone_or_in_a_crowd(models):
    model = models["relaxed"]
    prompts = _prompts(lengths=(4, 11, 6, 8, 3, 9, 5), seed=3)
    alone = DepthwiseEngine(model, max_batch=1, max_len=32).generate(prompts[3:4], NEW)[0].tokens
    crowd = DepthwiseEngine(model, max_batch=4, max_len=32).generate(prompts, NEW)
    assert crowd[3].tokens == alone


def test_the_cache_is_preallocated_and_slots_are_reused(models):
    engine = DepthwiseEngine(models["recursive"], max_batch=2, max_len=24)
    size = engine.cache.nbytes()
    for seed in range(3):
        engine.generate(_prompts(seed=seed), 6)
        assert engine.cache.free == [0, 1] and engine.cache.nbytes() == size


def test_eos_ends_a_request_early(models):
    model, prompts = models["recursive"], _prompts()
    free_run = DepthwiseEngine(model, max_batch=2, max_len=32).generate(prompts, NEW)
    # a token that first appears after two others in some continuation
    i, j = next((i, j) for i, r in enumerate(free_run) for j in range(2, NEW) if r.tokens[j] not in r.tokens[:j])
    eos = free_run[i].tokens[j]
    done = DepthwiseEngine(model, max_batch=2, max_len=32, eos_token_id=eos).generate(prompts, NEW)
    assert done[i].tokens == free_run[i].tokens[:j + 1]
    assert [r.tokens for r in done] == hf_generate(model, prompts, NEW, batch_size=1, eos_token_id=eos)


def test_bad_input_is_refused():
    sequence = convert(make_tiny("llama", layers=4), loops=2, init="stepwise", sharing="sequence")
    with pytest.raises(ValueError, match="needs cycle sharing"):
        DepthwiseEngine(sequence)
    engine = DepthwiseEngine(make_tiny("llama", layers=2), max_len=8)
    with pytest.raises(ValueError, match="prompt 0: 6 \\+ 4 tokens exceed max_len 8"):
        engine.generate([[1] * 6], 4)


# --- early exit ---------------------------------------------------------------------------
def _first_loop_only(model):
    """The recursive model cut after its first loop (its exit 1 as the output)."""
    import copy

    from rrt.model.families import family_of

    cut = copy.deepcopy(model)
    k = cut.config.text_config.num_hidden_layers // cut.config.num_loops
    path = family_of(cut.config.text_config).layers_path
    cut.base.set_submodule(path, torch.nn.ModuleList(list(cut.base.get_submodule(path))[:k]))
    cut.base.config.num_hidden_layers = cut.config.text_config.num_hidden_layers = k
    return cut


@pytest.mark.parametrize("exit_kv", ["propagate", "continue"])
def test_always_exiting_at_loop_one_is_the_first_loop_alone(models, exit_kv):
    model = models["relaxed"]
    prompts = _prompts()
    done = DepthwiseEngine(model, max_batch=2, max_len=32, exit_rule=("max_prob", 0.0),
                           exit_kv=exit_kv).generate(prompts, NEW)
    assert [r.tokens for r in done] == [hf_generate(_first_loop_only(model), [p], NEW)[0] for p in prompts]
    assert all(r.exit_loops == [1] * NEW for r in done)


@pytest.mark.parametrize("family", ["gemma3", "gpt_neox"])
def test_always_exiting_at_loop_one_in_other_families(family):
    model = convert(make_tiny(family, layers=4), loops=2, init="stepwise", rank=4).eval()
    prompts = _prompts(lengths=(5, 9, 3))
    done = DepthwiseEngine(model, max_batch=2, max_len=32, exit_rule=("max_prob", 0.0)).generate(prompts, NEW)
    assert [r.tokens for r in done] == [hf_generate(_first_loop_only(model), [p], NEW)[0] for p in prompts]


def test_an_unreachable_threshold_changes_nothing(models):
    model, prompts = models["relaxed"], _prompts()
    plain = DepthwiseEngine(model, max_batch=2, max_len=32).generate(prompts, NEW)
    never = DepthwiseEngine(model, max_batch=2, max_len=32, exit_rule=("entropy", -1.0)).generate(prompts, NEW)
    assert [r.tokens for r in never] == [r.tokens for r in plain]


def _threshold(model, prompts, quantile=0.5):
    """A max-prob threshold that about half the tokens' first exit reaches."""
    from rrt.model.exits import exit_confidence, exit_hidden_states, exit_logits
    with torch.no_grad():
        hidden = exit_hidden_states(model, torch.tensor([prompts[3]]))
        return exit_confidence(exit_logits(model, hidden[0]), "max_prob").quantile(quantile).item()


def test_continued_exits_are_the_simulated_early_exit(models):
    """`continue` keeps every KV exact, so its tokens are what the paper's simulation reads:
    the full model over the sequence, each position read at its first confident exit."""
    from rrt.model.exits import exit_readout, read_when_confident

    model, prompts = models["relaxed"], _prompts()
    threshold = _threshold(model, prompts)
    done = DepthwiseEngine(model, max_batch=2, max_len=32, exit_rule=("max_prob", threshold),
                           exit_kv="continue").generate(prompts, NEW)
    exits = [loops for r in done for loops in r.exit_loops]
    assert 0 < exits.count(1) < len(exits)  # some tokens leave early, some do not
    for p, r in zip(prompts, done):
        ids = torch.tensor([p + r.tokens[:-1]])
        with torch.no_grad(), exit_readout(model, read_when_confident(model, "max_prob", threshold)):
            simulated = model(input_ids=ids).logits[0, len(p) - 1:].argmax(-1).tolist()
        assert r.tokens == simulated


def test_teacher_forced_scores_are_the_simulated_early_exits(models):
    """`score` feeds given continuations through the same steps: with `continue` each token's
    -log p is the simulated exit's (the full model over the sequence, read at each position's
    first confident exit); without an exit, the model's own; `propagate` approximates the
    deeper KV, so its scores differ once a token has exited."""
    from rrt.model.exits import exit_readout, read_when_confident

    model, prompts = models["relaxed"], _prompts()
    continuations = _prompts(lengths=(8, 6, 9, 7, 8), seed=5)
    threshold = _threshold(model, prompts)

    def reference(p, c, rule=None):
        ids = torch.tensor([p + c])
        with torch.no_grad(), (exit_readout(model, rule) if rule else torch.no_grad()):
            logp = torch.log_softmax(model(input_ids=ids).logits[0, len(p) - 1:-1].float(), -1)
        return (-logp[torch.arange(len(c)), torch.tensor(c)]).tolist()

    plain = DepthwiseEngine(model, max_batch=2, max_len=32).score(prompts, continuations)
    for p, c, r in zip(prompts, continuations, plain):
        assert r.tokens == c and r.exit_loops == [3] * len(c)
        assert r.nll == pytest.approx(reference(p, c), abs=1e-4)
    rule = ("max_prob", threshold)
    cont = DepthwiseEngine(model, max_batch=2, max_len=32, exit_rule=rule, exit_kv="continue").score(
        prompts, continuations)
    for p, c, r in zip(prompts, continuations, cont):
        assert r.nll == pytest.approx(reference(p, c, read_when_confident(model, "max_prob", threshold)), abs=1e-4)
    assert 0 < sum(x < 3 for r in cont for x in r.exit_loops) < sum(map(len, continuations))
    prop = DepthwiseEngine(model, max_batch=2, max_len=32, exit_rule=rule, exit_kv="propagate").score(
        prompts, continuations)
    gaps = [abs(a - b) for rp, rc in zip(prop, cont) for a, b in zip(rp.nll, rc.nll)]
    assert max(gaps) > 1e-3


@pytest.mark.parametrize("exit_kv", ["propagate", "continue"])
def test_exiting_requests_do_not_depend_on_the_crowd(models, exit_kv):
    model = models["relaxed"]
    prompts = _prompts(lengths=(4, 11, 6, 8, 3, 9, 5), seed=3)
    rule = ("max_prob", _threshold(model, prompts))
    alone = DepthwiseEngine(model, max_batch=1, max_len=32, exit_rule=rule, exit_kv=exit_kv).generate(prompts[3:4], NEW)
    crowd = DepthwiseEngine(model, max_batch=4, max_len=32, exit_rule=rule, exit_kv=exit_kv).generate(prompts, NEW)
    assert (crowd[3].tokens, crowd[3].exit_loops) == (alone[0].tokens, alone[0].exit_loops)


# --- rrt generate --------------------------------------------------------------------------
def test_rrt_generate_writes_one_line_per_prompt_in_order(tiny_real_vocab_dir, tmp_path, capsys):
    """Both engines through the command line, on a recursive model over the real tokenizer:
    the same greedy tokens; exit loops recorded per token."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rrt.cli import main

    rec = tmp_path / "rec"
    convert(AutoModelForCausalLM.from_pretrained(tiny_real_vocab_dir), loops=2, init="stepwise").save_pretrained(rec)
    AutoTokenizer.from_pretrained(tiny_real_vocab_dir).save_pretrained(rec)
    texts = ["The capital of France is", "Once upon a time, in a land far away, there", "2 + 2 ="]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    outs = {}
    for engine in ("hf", "depthwise"):
        out = tmp_path / f"{engine}.jsonl"
        assert main(["generate", "--model", str(rec), "--prompts", str(prompts), "--max-new-tokens", "6",
                     "--engine", engine, "--max-batch", "2", "--out", str(out)]) == 0
        outs[engine] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [o["prompt"] for o in outs["depthwise"]] == texts
    assert [o["token_ids"] for o in outs["depthwise"]] == [o["token_ids"] for o in outs["hf"]]
    tokenizer = AutoTokenizer.from_pretrained(rec)
    for o in outs["depthwise"]:
        assert o["exit_loops"] == [2] * len(o["token_ids"]) and 1 <= len(o["token_ids"]) <= 6
        assert o["text"] == tokenizer.decode(o["token_ids"], skip_special_tokens=True)
    out = tmp_path / "exit.jsonl"
    assert main(["generate", "--model", str(rec), "--prompts", str(prompts), "--max-new-tokens", "6",
                 "--exit", "max_prob:0", "--out", str(out)]) == 0
    assert all(set(json.loads(line)["exit_loops"][1:]) <= {1} for line in out.read_text().splitlines())


@pytest.mark.parametrize("argv, match", [
    (["--exit", "margin:0.5"], "--exit must be none or CRITERION:T"),
    (["--exit", "max_prob:0.5", "--engine", "hf"], "--exit needs --engine depthwise"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
])
def test_rrt_generate_bad_input(tmp_path, capsys, argv, match):
    from rrt.cli import main

    model = tmp_path / "m"
    make_tiny("llama", layers=2).save_pretrained(model)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    assert main(["generate", "--model", str(model), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                 *argv]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
