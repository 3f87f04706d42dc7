"""Evaluation at every exit: reading the model out at an intermediate exit (what lm-eval
then scores), confidence-threshold exiting, and the per-exit eval JSON."""
import json
import math

import pytest
import torch

from rrt.eval.exit_rates import ExitTally
from rrt.model.convert import convert
from rrt.model.exits import (
    exit_confidence,
    exit_hidden_states,
    exit_logits,
    exit_readout,
    exits_taken,
    read_at_exit,
    read_when_confident,
)

from .test_exits import _recursive


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox"])
def test_reading_out_at_an_exit_gives_that_exits_logits(family, ids):
    model = _recursive(family, 3, rank=4)
    with torch.no_grad():
        hidden = exit_hidden_states(model, ids)
        plain = model(input_ids=ids).logits
        for b in range(3):
            with exit_readout(model, read_at_exit(b)):
                assert torch.equal(model(input_ids=ids).logits, exit_logits(model, hidden[b]))
        assert torch.equal(model(input_ids=ids).logits, plain)  # the hooks are gone


def test_confidence_of_known_distributions():
    uniform = torch.zeros(3, 8)
    assert torch.allclose(exit_confidence(uniform, "max_prob"), torch.full((3,), 1 / 8))
    assert torch.allclose(exit_confidence(uniform, "entropy"), torch.full((3,), math.log(8)))
    sure = torch.tensor([[100.0, 0, 0, 0]])
    assert exit_confidence(sure, "max_prob").item() == pytest.approx(1.0)
    assert exit_confidence(sure, "entropy").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown exit criterion 'margin'"):
        exit_confidence(uniform, "margin")


def test_a_token_leaves_at_its_first_confident_exit():
    """3 exits, 4 positions: exit 1 is sure at position 0, exit 2 at positions 0, 1 and 3
    (position 3 first there); the last exit's confidence is never read."""
    confidences = [torch.tensor([0.9, 0.2, 0.1, 0.4]), torch.tensor([0.95, 0.8, 0.3, 0.7]),
                   torch.tensor([0.0, 0.0, 0.0, 0.0])]
    assert exits_taken(confidences, "max_prob", 0.6).tolist() == [0, 1, 2, 1]
    assert exits_taken(confidences, "max_prob", 0.99).tolist() == [2, 2, 2, 2]
    entropies = [torch.tensor([0.5, 3.0]), torch.tensor([9.0, 9.0])]
    assert exits_taken(entropies, "entropy", 1.0).tolist() == [0, 1]


def test_confident_readout_mixes_exits_position_by_position(ids):
    model = _recursive("gemma2", 2, rank=4)
    with torch.no_grad():
        hidden = exit_hidden_states(model, ids)
        logits = [exit_logits(model, h) for h in hidden]
        confidence = exit_confidence(logits[0], "max_prob")
        threshold = confidence.median().item()  # about half the positions leave at exit 1
        with exit_readout(model, read_when_confident(model, "max_prob", threshold)):
            mixed = model(input_ids=ids).logits
    first = confidence >= threshold
    assert 0 < int(first.sum()) < first.numel()
    assert torch.allclose(mixed[first], logits[0][first], atol=1e-5)
    assert torch.allclose(mixed[~first], logits[1][~first], atol=1e-5)


def test_threshold_tally_on_a_hand_made_case():
    """2 exits over 3 tokens of a 4-word vocabulary. Exit 1 is sure (p=0.97) of the right
    word at token 0 and unsure elsewhere; the final exit is right at tokens 0 and 1."""
    sure, flat = [4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]
    exit1 = torch.tensor([sure, flat, flat])
    final = torch.tensor([sure, [0.0, 3.0, 0, 0], [0.0, 0.0, 0.0, 1.0]])
    targets = torch.tensor([0, 1, 2])
    tally = ExitTally({"max_prob": [0.9, 0.1, 1.0]})
    tally.add([exit1, final], targets)
    result = tally.result()
    nll = lambda z, t: -torch.log_softmax(z, -1)[t].item()  # noqa: E731
    final_nll = sum(nll(final[i], targets[i]) for i in range(3)) / 3
    exit1_nll = sum(nll(exit1[i], targets[i]) for i in range(3)) / 3
    assert result["tokens"] == 3
    assert result["exits"][0]["acc"] == pytest.approx(1 / 3) and result["exits"][1]["acc"] == pytest.approx(2 / 3)
    assert result["exits"][1]["nll"] == pytest.approx(final_nll) and result["exits"][0]["nll"] == pytest.approx(exit1_nll)
    at_09, at_01, at_1 = result["thresholds"]["max_prob"]
    assert at_09["exit_at"] == pytest.approx([1 / 3, 2 / 3]) and at_09["exit_rate"] == pytest.approx(1 / 3)
    assert at_09["nll"] == pytest.approx(final_nll)  # token 0 left with the same word, same p
    assert at_09["acc"] == pytest.approx(2 / 3) and at_09["agree"] == 1.0 and at_09["mean_loops"] == pytest.approx(5 / 3)
    assert at_01["exit_at"] == [1.0, 0.0] and at_01["nll"] == pytest.approx(exit1_nll) and at_01["acc"] == pytest.approx(1 / 3)
    assert at_01["agree"] == pytest.approx(1 / 3)  # argmax of a flat row is word 0; final says 1, 3
    assert at_1["exit_at"] == [0.0, 1.0] and at_1["ppl"] == pytest.approx(math.exp(final_nll))
    assert result["oracle"]["exit_at"] == pytest.approx([1 / 3, 2 / 3])


def test_eval_json_has_every_exit_and_threshold(tiny_real_vocab_dir, tmp_path):
    """Tasks at exit 1 equal the tasks at a threshold every token reaches at exit 1 (max
    prob >= 1e-9); a threshold no token reaches (1.0) gives the final exit's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rrt.eval.evaluate import evaluate_model

    from .test_evaluate import _save_blocks

    rec_dir = tmp_path / "rec"
    base = AutoModelForCausalLM.from_pretrained(tiny_real_vocab_dir)
    convert(base, loops=2, init="stepwise", rank=4).save_pretrained(rec_dir)
    AutoTokenizer.from_pretrained(tiny_real_vocab_dir).save_pretrained(rec_dir)
    held = _save_blocks(tmp_path / "held", torch.randint(0, 1000, (3, 16), generator=torch.Generator().manual_seed(0)).tolist())
    result = evaluate_model(rec_dir, tmp_path / "rec.json", {"wiki": str(held)}, tasks=["piqa", "arc_easy"], limit=4,
                            batch_size=2, exits=True, exit_thresholds={"max_prob": [0.5], "entropy": [2.0]},
                            exit_task_thresholds={"max_prob": [1e-9, 1.0]})
    exits = result["exits"]
    assert exits["loops"] == 2 and exits["depths"] == [0, 1]
    assert exits["ppl"]["wiki"]["exits"][-1]["ppl"] == pytest.approx(result["ppl_wiki"], rel=1e-6)
    assert set(exits["ppl"]["wiki"]["thresholds"]) == {"max_prob", "entropy"}
    first, last = exits["tasks"]
    assert first["exit"] == 1 and last["exit"] == 2
    assert last["acc_avg"] == result["acc_avg"] and last["acc_piqa"] == result["acc_piqa"]
    everyone, no_one = exits["task_thresholds"]["max_prob"]
    assert (everyone["threshold"], no_one["threshold"]) == (1e-9, 1.0)
    assert {k: everyone[k] for k in first if k != "exit"} == {k: v for k, v in first.items() if k != "exit"}
    assert {k: no_one[k] for k in last if k != "exit"} == {k: v for k, v in last.items() if k != "exit"}
    assert json.loads((tmp_path / "rec.json").read_text()) == result


@pytest.mark.parametrize("argv, match", [
    (["--exit-thresholds", "margin=0.5"], "--exit-thresholds: unknown key 'margin' (known: max_prob, entropy)"),
    (["--exit-thresholds", "max_prob=0.5,1.5"],
     "--exit-thresholds max_prob must be a list of items, each in (0, 1], got '0.5,1.5'"),
    (["--exit-task-thresholds", "entropy=a"],
     "--exit-task-thresholds entropy must be a list of items, each a finite number >= 0, got 'a'"),
])
def test_bad_thresholds_are_one_line_errors(tmp_path, capsys, argv, match):
    from rrt.cli import main

    from .test_exits import _blocks

    _recursive("llama", 2).save_pretrained(tmp_path / "model")
    held = _blocks(tmp_path)
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tmp_path / "model"), "--out", str(out), "--ppl", f"x={held}",
                 "--tasks", "none", "--exits", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[-1] and not out.exists()


def test_task_reruns_at_exits_read_kept_states_and_equal_the_models_logits(tiny_real_vocab_dir, tmp_path, ids):
    """`ExitStates` keeps every exit's hidden states of the tasks' forward passes: reading
    the tasks at exit 1 (or the last exit) from them gives exactly the logits, and so the
    accuracies, of the model read out with `exit_readout`, and runs no depth again."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rrt.eval.tasks import ExitLM, ExitStates, run_tasks

    base = AutoModelForCausalLM.from_pretrained(tiny_real_vocab_dir)
    model = convert(base, loops=2, init="stepwise", rank=4).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_real_vocab_dir)
    states = ExitStates(model)
    for readout in (None, read_at_exit(0)):
        lm = ExitLM(pretrained=model, tokenizer=tokenizer, batch_size=2, max_length=64, states=states, readout=readout)
        kept = lm._model_call(ids)
        with torch.no_grad(), (exit_readout(model, readout) if readout else torch.no_grad()):
            assert torch.equal(kept, model(input_ids=ids).logits)

    def scores(result):
        return {t: {k: v for k, v in r.items() if k != "seconds"} for t, r in result.items()}

    run = dict(tasks=["piqa", "arc_easy"], limit=4, batch_size=2, workdir=tmp_path / "tasks")
    states = ExitStates(model)
    assert scores(run_tasks(model, tokenizer, states=states, **run)) == scores(run_tasks(model, tokenizer, **run))
    kept = len(states.states)
    assert kept > 0
    with exit_readout(model, read_at_exit(0)):
        at_exit = run_tasks(model, tokenizer, **run)
    assert scores(run_tasks(model, tokenizer, states=states, readout=read_at_exit(0), **run)) == scores(at_exit)
    assert len(states.states) == kept  # every forward pass of the rerun was a kept one
