"""Dynamic Layer Tying (David-Hay & Wolf, ICLR 2024): while the model trains, a Q-learning
agent decides, one layer at a time, whether depth i trains a layer of its own or runs the
layer of an earlier depth j < i. docs/dlt.md states what follows the paper and its authors'
code, and what we chose where they are silent.

    state    the tying pattern in DLT's form (depth i -> the first depth j <= i that runs the
             same layer), divided by L - 1
    actions  for the layer i being decided: copy depth j < i (join j's layer: one tensor,
             gradients from every depth that runs it) or own (i gets its own copy of the
             weights it runs now; nothing changes if it already is alone)
    Q        an MLP, L -> q_hidden -> ReLU -> L(L+1)/2: layer i's i+1 action values are
             the outputs i(i+1)/2 ... i(i+1)/2 + i
    reward   minus the cross-entropy (nats) of the model on `probe_blocks` fixed training
             blocks, measured in eval mode at each decision, credited to the previous one
    schedule a decision every `interval` optimizer steps, layers 1..L-1 in turn; epsilon-
             greedy, epsilon multiplied by `epsilon_decay` after each pass over the layers
             down to `epsilon_min`
    budget   with `max_unique` = K, a run whose start has more than K unique layers is
             brought to K before its first step by forced ties (not the agent's choices):
             depth d >= K ties to depth d mod K, the CYCLE of the first K layers (the
             fixed recursive model of that size, `rec-lower`'s start); from then on
             an action is offered only if it keeps at most K unique layers (`budget`
             at_most) or exactly K (`budget` exactly: a depth sharing its layer may move to
             another one, a depth alone may not join one, and `own` may not split one)

Every decision is a row of `dlt_decisions.csv` (next to loss.csv): step, layer_map (DLT
form, space-separated), unique_layers, trainable_params, reward, epsilon. A checkpoint holds
the agent's whole state (`dlt_agent.pt`: the map, the Q-network and its optimizer, the RNG,
epsilon, the next layer, the pending transition and the rows so far), written before the
checkpoint's manifest, so a resumed run makes the decisions of an uninterrupted one.
"""
from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from ..io import atomic_write_text
from ..model.convert import convert
from ..model.modeling import RecursiveForCausalLM
from ..model.sharing import canonical, relabel, unique_layers
from ..model.tying import retie, retie_optimizer, trainable_params
from ..settings import DLTSettings
from .checkpoints import DLT_AGENT

AGENT_FILE = DLT_AGENT  # in every checkpoint (checkpoints._required)
DECISIONS_CSV = "dlt_decisions.csv"
COLUMNS = ("step", "layer_map", "unique_layers", "trainable_params", "reward", "epsilon")
Q_WEIGHT_DECAY = 0.01  # the authors' code


def _offset(layer: int) -> int:
    return layer * (layer + 1) // 2


class DLTAgent:
    """The agent's state and decisions over a model of `num_layers` depths; knows nothing of
    the model (the callback applies its choices)."""

    def __init__(self, settings: DLTSettings, num_layers: int):
        if num_layers < 2:
            raise ValueError(f"Dynamic Layer Tying needs at least 2 layers, the model has {num_layers}")
        if settings.budget == "exactly" and settings.max_unique > num_layers:
            raise ValueError(f"dlt.budget exactly with max_unique {settings.max_unique}: the model has only "
                             f"{num_layers} layers")
        self.settings, self.num_layers = settings, num_layers
        with torch.random.fork_rng(devices=[]):  # its own init, the run's RNG untouched
            torch.manual_seed(settings.seed)
            self.q = nn.Sequential(nn.Linear(num_layers, settings.q_hidden), nn.ReLU(),
                                   nn.Linear(settings.q_hidden, _offset(num_layers)))
        self.q_optimizer = torch.optim.AdamW(self.q.parameters(), lr=settings.q_lr, weight_decay=Q_WEIGHT_DECAY)
        self.rng = random.Random(settings.seed)
        self.epsilon = settings.epsilon
        self.next_layer = 1
        self.layer_map = list(range(num_layers))  # DLT form; the run starts untied
        self.pending: tuple[list[int], int, int] | None = None  # (state, layer, action) awaiting its reward
        self.rows: list[dict] = []

    # --- the pieces of a decision ----------------------------------------------------------
    def _state(self, layer_map) -> torch.Tensor:
        return torch.tensor(layer_map, dtype=torch.float32) / (self.num_layers - 1)

    def _values(self, layer_map, layer: int) -> torch.Tensor:
        return self.q(self._state(layer_map))[_offset(layer):_offset(layer) + layer + 1]

    def apply(self, layer_map: list[int], layer: int, action: int) -> list[int]:
        """The pattern (DLT form) after `action` on `layer`: a < layer copies depth a, a ==
        layer owns."""
        slots = relabel(layer_map)
        if action < layer:
            slots[layer] = slots[action]
        elif slots.count(slots[layer]) > 1:
            slots[layer] = max(slots) + 1
        return canonical(slots)

    def allowed(self, layer_map: list[int], layer: int) -> list[int]:
        """The actions open to `layer` (copies 0..layer-1, own: layer): all of them without a
        budget; with K, those whose map has at most K unique layers (`at_most`) or exactly K
        (`exactly`)."""
        cap = self.settings.max_unique
        actions = range(layer + 1)
        if cap is None:
            return list(actions)
        counts = {a: unique_layers(self.apply(layer_map, layer, a)) for a in actions}
        if self.settings.budget == "exactly":
            return [a for a in actions if counts[a] == cap]
        return [a for a in actions if counts[a] <= cap]

    def learn(self, reward: float) -> None:
        """One Q-learning step for the pending transition, now that its reward is known: the
        target is reward + gamma * max Q(next state) over the next layer's actions."""
        if self.pending is None:
            return
        state, layer, action = self.pending
        with torch.no_grad():
            target = reward + self.settings.gamma * self._values(self.layer_map, self.next_layer).max()
        predicted = self._values(state, layer)[action]
        loss = (predicted - target) ** 2
        self.q_optimizer.zero_grad()
        loss.backward()
        self.q_optimizer.step()
        self.pending = None

    def choose(self, layer: int) -> int:
        actions = self.allowed(self.layer_map, layer)
        if self.rng.random() < self.epsilon:
            return self.rng.choice(actions)
        with torch.no_grad():
            values = self._values(self.layer_map, layer)
        return max(actions, key=lambda a: (values[a].item(), -a))

    def _advance(self) -> None:
        self.next_layer += 1
        if self.next_layer >= self.num_layers:  # a pass over the layers is done
            self.next_layer = 1
            self.epsilon = max(self.epsilon * self.settings.epsilon_decay, self.settings.epsilon_min)

    def over_budget(self) -> bool:
        cap = self.settings.max_unique
        return cap is not None and unique_layers(self.layer_map) > cap

    def forced_tie(self) -> tuple[int, int]:
        """The next forced tie (depth, the depth it copies) on the way from the untied start
        to the CYCLE of K layers: depth d runs depth d mod K's layer, the map of the recursive
        model of the same size with its first K layers kept (`rec-lower`'s), so the learned
        run starts where a fixed one does. The first depth d >= K not yet on depth d mod K's
        layer ties to it."""
        cap = self.settings.max_unique
        slots = relabel(self.layer_map)
        for depth in range(cap, self.num_layers):
            if slots[depth] != slots[depth % cap]:
                return depth, depth % cap
        raise RuntimeError(f"over the budget of {cap} with no forced tie left: {self.layer_map}")

    def decide(self, reward: float, forced: bool = False) -> tuple[int, int, float]:
        """Learn from `reward` (the model as it is now), then choose the next layer's action;
        returns (layer, action, epsilon used). A forced decision is `forced_tie`'s: not the
        agent's (no exploration, epsilon 0; no transition to learn from, the layer in turn
        unchanged)."""
        if forced:
            layer, action = self.forced_tie()
            self.layer_map = self.apply(self.layer_map, layer, action)
            return layer, action, 0.0
        self.learn(reward)
        layer, epsilon = self.next_layer, self.epsilon
        action = self.choose(layer)
        self.pending = (list(self.layer_map), layer, action)
        self.layer_map = self.apply(self.layer_map, layer, action)
        self._advance()
        return layer, action, epsilon

    # --- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"layer_map": list(self.layer_map), "q": self.q.state_dict(),
                "q_optimizer": self.q_optimizer.state_dict(), "rng": self.rng.getstate(), "epsilon": self.epsilon,
                "next_layer": self.next_layer, "pending": self.pending, "rows": list(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        self.layer_map = list(state["layer_map"])
        self.q.load_state_dict(state["q"])
        self.q_optimizer.load_state_dict(state["q_optimizer"])
        rng = state["rng"]
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        self.epsilon, self.next_layer = state["epsilon"], state["next_layer"]
        pending = state["pending"]
        self.pending = None if pending is None else (list(pending[0]), int(pending[1]), int(pending[2]))
        self.rows = [dict(r) for r in state["rows"]]

    def save(self, path: Path) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path: Path) -> None:
        self.load_state_dict(torch.load(path, weights_only=True))


def decisions_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class DLTCallback(TrainerCallback):
    """Runs the agent in a Trainer: forced decisions before the first step (budget), one
    decision every `interval` steps (before that step's checkpoint is written), its state
    into every checkpoint (put it before the ManifestCallback, so the file is in the
    manifest) and the decisions CSV at the end of a complete run. `trainer` must be set once
    the Trainer exists (its parameter groups are the optimizer's)."""

    def __init__(self, agent: DLTAgent, probe: torch.Tensor, out_dir: Path):
        self.agent, self.probe, self.out_dir = agent, probe, Path(out_dir)
        self.trainer = None

    def _groups(self, model):
        decay = set(self.trainer.get_decay_parameter_names(model))
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return [[p for n, p in params if n in decay], [p for n, p in params if n not in decay]]

    @torch.no_grad()
    def _reward(self, model) -> float:
        was_training = model.training
        model.eval()
        probe = self.probe.to(next(model.parameters()).device)
        loss = model(input_ids=probe, labels=probe).loss.float().item()
        model.train(was_training)
        return -loss

    def _decide(self, step: int, model, optimizer, forced: bool = False) -> None:
        reward = self._reward(model)
        layer, _, epsilon = self.agent.decide(reward, forced)
        change = retie(model, relabel(self.agent.layer_map), moved=(layer,))  # an untied layer takes the copy
        retie_optimizer(optimizer, model, change, self._groups)
        self.agent.rows.append({"step": step, "layer_map": " ".join(map(str, self.agent.layer_map)),
                                "unique_layers": unique_layers(self.agent.layer_map),
                                "trainable_params": trainable_params(model), "reward": reward, "epsilon": epsilon})

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        while self.agent.over_budget():
            self._decide(state.global_step, model, optimizer, forced=True)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        if step % self.agent.settings.interval == 0 and step < state.max_steps:
            self._decide(step, model, optimizer)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.agent.save(Path(args.output_dir) / f"checkpoint-{state.global_step}" / AGENT_FILE)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step >= state.max_steps:
            atomic_write_text(self.out_dir / DECISIONS_CSV, decisions_csv(self.agent.rows))


# --- the run ---------------------------------------------------------------------------------
def check_run(settings: DLTSettings, *, world_size: int, deepspeed, early_exit) -> None:
    """What DLT cannot run with, in one line each."""
    if world_size > 1 or deepspeed:
        raise ValueError("Dynamic Layer Tying runs on one process without DeepSpeed (a retie changes the parameters, "
                         "which DDP and DeepSpeed fix when they wrap the model)")
    if early_exit is not None:
        raise ValueError("Dynamic Layer Tying and early-exit training cannot be combined (exits need loops)")


def untied_start(model, model_dir) -> RecursiveForCausalLM:
    """The model a DLT run starts from: a recursive model whose depths each run their own
    layer. A plain model is converted with one loop (its layers as they are); a recursive one
    must already be untied."""
    if not isinstance(model, RecursiveForCausalLM):
        return convert(model, loops=1, init="stepwise")
    if unique_layers(model.config.layer_map) != len(model.config.layer_map):
        raise ValueError(f"Dynamic Layer Tying starts from an untied model: {model_dir} ties its "
                         f"{len(model.config.layer_map)} depths into {model.config.num_slots} layers (layer map "
                         f"{' '.join(map(str, model.config.layer_map))}); give a base model or one converted with "
                         "loops=1")
    return model


def probe_blocks(data, count: int, seed: int) -> torch.Tensor:
    """`count` training blocks drawn with `seed` (the reward's batch)."""
    picked = sorted(random.Random(seed).sample(range(len(data)), min(count, len(data))))
    return torch.stack([torch.as_tensor(data[i]["input_ids"], dtype=torch.long) for i in picked])


def setup(settings: DLTSettings, model, model_dir, data, out_dir, resume: Path | None):
    """(the model to train, the callback): the untied start, or, resuming, the model retied
    to the checkpoint's pattern and the agent with its saved state."""
    model = untied_start(model, model_dir)
    agent = DLTAgent(settings, len(model.config.layer_map))
    if resume is not None:
        agent.load(Path(resume) / AGENT_FILE)
        retie(model, relabel(agent.layer_map))
    return model, DLTCallback(agent, probe_blocks(data, settings.probe_blocks, settings.seed), out_dir)
