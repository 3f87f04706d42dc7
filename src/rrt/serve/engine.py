"""Continuous depth-wise batching (paper Sec. 5), for real: one engine step runs the K
shared layers once over a batch whose rows sit at *different loops* of the recursion.

The unit of work is (request, loop). A request holds one token in flight; each step
takes it one loop deeper (K depths: depth = loop·K + k at shared layer k, with that
depth's KV cache slot and LoRA), and after its last loop the token is read out (final
norm, LM head) and the next token enters at loop 0 in the next step. Requests join as
soon as a sequence slot frees and leave when done, so the batch stays full across loops.
A plain model is the B = 1 case: every step is a whole forward, i.e. continuous
sequence-wise batching.

Per step the work is a few tensor calls per shared layer: rows carry their depth, slot
and position as tensors (`rrt.serve.cache`), relaxed models add each depth's LoRA to its
own rows (the shared layer runs through `SharedSlot.rows_at`, `rrt.model.binding`, as the
model's own depths run through `SharedSlot.at`), and the decoder layers are transformers' own.
The prompts of requests joining at once are prefilled together (right-padded) through
every depth before they join.
Greedy decoding.
"""
from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field

import torch

from ..model.exits import exit_confidence, exit_logits, is_confident
from ..model.families import family_of
from ..model.sharing import is_loop
from ..settings import EXIT_KV_MODES, SERVE
from .cache import DepthKVCache, RowCache, attention_mask


@dataclass
class Request:
    index: int
    prompt: list[int]
    max_new_tokens: int
    tokens: list[int] = field(default_factory=list)
    exit_loops: list[int] = field(default_factory=list)
    slot: int = -1
    forced: list[int] | None = None   # teacher forcing (`score`): these tokens are fed instead of the greedy ones
    nll: list[float] = field(default_factory=list)  # with `forced`: each forced token's -log p at its exit
    rows: int = 0          # rows in flight: the next token's, and exited tokens' still filling KV
    done: bool = False


@dataclass
class Row:
    """One token of a request at one loop: the unit of work of an engine step."""
    request: Request
    position: int
    loop: int
    hidden: torch.Tensor   # (1, d): the input of its next loop
    shadow: bool = False   # already emitted (early exit): runs on only to fill deeper KV


class DepthwiseEngine:
    """`generate(prompts, max_new_tokens)` with at most `max_batch` requests in flight,
    each up to `max_len` tokens (prompt + generated)."""

    def __init__(self, model, *, max_batch: int = 8, max_len: int = 1024, eos_token_id: int | None = None,
                 exit_rule: tuple[str, float] | None = None, exit_kv: str = SERVE["exit_kv"]):
        self.model = model.eval()
        if exit_kv not in EXIT_KV_MODES:
            raise ValueError(f"exit_kv must be one of {', '.join(EXIT_KV_MODES)}, got {exit_kv!r}")
        self.exit_rule, self.exit_kv = exit_rule, exit_kv
        config = model.config
        self.recursive = getattr(config, "model_type", None) == "recursive"
        text = config.get_text_config(decoder=True)
        # Every registered family: its spec (rrt.model.families) names the layer's cache
        # argument and the norm before attention, and picks each row's rotary embedding.
        self.family = family = family_of(text)
        backbone = model.base if self.recursive else model
        self.embed = model.get_input_embeddings()
        self.rotary = backbone.get_submodule(family.rotary_path)
        types = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
        self.layer_types = sorted(set(types))
        self._type_of_depth = torch.tensor([self.layer_types.index(t) for t in types],
                                           device=next(model.parameters()).device)
        self._window_of_depth = torch.tensor([text.sliding_window if t == "sliding_attention" else 0 for t in types])
        self._cache_arg = family.cache_kwarg
        self._attention = family.attn
        self.depths = text.num_hidden_layers
        if self.recursive:
            if not is_loop(config.layer_map):
                raise ValueError("depth-wise batching needs cycle sharing (a layer map that loops: depth l runs shared "
                                 f"layer l mod K), not {config.sharing!r} (layer map "
                                 f"{' '.join(map(str, config.layer_map))})")
            self.loops = len(config.layer_map) // config.num_slots
            self.slots = model.shared_slots
        else:
            self.loops, self.layers = 1, list(backbone.get_submodule(family.layers_path))
        self.per_loop = self.depths // self.loops
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        self.cache = DepthKVCache(self.depths, max_batch, kv_heads, head_dim, max_len,
                                  dtype=self.dtype, device=self.device)
        self.eos_token_id = eos_token_id
        self._scoring = False

    # --- one shared layer over rows at their own depths ------------------------------------
    def _run_layer(self, k: int, hidden, depth, slot, positions, length: int, attention_only: bool = False):
        """Shared layer k (a plain model: layer k) over `hidden` (rows, q, d): row r at
        depth[r] of sequence slot[r], its q tokens at positions[r]. `attention_only`: just
        write the rows' keys and values (the layer's norm and attention; output dropped)."""
        bound = self.slots[k].rows_at(depth) if self.recursive else contextlib.nullcontext(self.layers[k])
        with bound as layer:
            window = self._window_of_depth.to(depth.device)[depth]
            kwargs = dict(attention_mask=attention_mask(positions, length, hidden.dtype, window if window.any() else None),
                          position_ids=positions, position_embeddings=self._position_embeddings(hidden, positions, depth))
            kwargs[self._cache_arg] = RowCache(self.cache, depth, slot, positions, length)
            if attention_only:
                getattr(layer, self._attention)(hidden_states=getattr(layer, self.family.attention_norm)(hidden),
                                                **kwargs)
                return hidden
            out = layer(hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def _position_embeddings(self, hidden, positions, depth):
        """(cos, sin) of every row: the rotary embedding of its depth's attention type."""
        row_types = self._type_of_depth.to(depth.device)[depth]
        return self.family.rotary_for_rows(self.rotary, hidden, positions, row_types, self.layer_types)

    def _run_loop(self, hidden, loop, slot, positions, length: int):
        """One loop (K shared layers) for rows at loop `loop` (a tensor: one per row)."""
        for k in range(self.per_loop):
            hidden = self._run_layer(k, hidden, loop * self.per_loop + k, slot, positions, length)
        return hidden

    # --- requests ---------------------------------------------------------------------
    def _prefill(self, joining: list[Request]) -> list[Row | None]:
        """The prompts of requests joining together, right-padded to one length, through every
        depth (their KV at each: later tokens may go deeper); each one's first token from its
        last prompt position's first confident exit (the last loop's without an exit rule).
        A pad position's KV is overwritten by the request's own token there before any query
        can reach it (keys at or after a query's position are masked)."""
        n, width = len(joining), max(len(r.prompt) for r in joining)
        ids = torch.zeros(n, width, dtype=torch.long, device=self.device)
        for i, r in enumerate(joining):
            r.slot = self.cache.allocate()
            ids[i, :len(r.prompt)] = torch.tensor(r.prompt, device=self.device)
        positions = torch.arange(width, device=self.device)[None].expand(n, -1)
        slot = torch.tensor([r.slot for r in joining], device=self.device)
        last = torch.tensor([len(r.prompt) - 1 for r in joining], device=self.device)
        hidden = self.embed(ids)
        first: list[tuple | None] = [None] * n  # (token, loops, logits)
        for b in range(self.loops):
            loop = torch.full((n,), b, device=self.device)
            hidden = self._run_loop(hidden, loop, slot, positions, width)
            pending = torch.tensor([i for i in range(n) if first[i] is None], dtype=torch.long, device=self.device)
            if len(pending):
                leaving, tokens, logits = self._exiting(hidden[pending, last[pending]][:, None], loop[pending])
                for j, (i, token) in enumerate(zip(pending[leaving].tolist(), tokens.tolist())):
                    first[i] = (token, b + 1, None if logits is None else logits[j])
        return [self._emit(r, *first[i], len(r.prompt)) for i, r in enumerate(joining)]

    def _emit(self, r: Request, token: int, loops: int, logits, position: int) -> Row | None:
        """Record a token (a teacher-forced request: its forced token, scored with `logits`);
        the row of the next one (None once the request is done)."""
        if r.forced is not None:
            target = r.forced[len(r.tokens)]
            r.nll.append(float(-torch.log_softmax(logits.float(), -1)[target]))
            token = target
        r.tokens.append(token)
        r.exit_loops.append(loops)
        eos = r.forced is None and self.eos_token_id is not None and token == self.eos_token_id
        r.done = len(r.tokens) >= r.max_new_tokens or eos
        if r.done:
            return None
        r.rows += 1
        return Row(r, position, 0, self.embed(torch.tensor([[token]], device=self.device))[0])

    def _retire(self, row: Row) -> None:
        """A row leaves; its request's slot is free once the request is done and has none left."""
        r = row.request
        r.rows -= 1
        if r.done and r.rows == 0:
            self.cache.release(r.slot)

    def score(self, prompts: list[list[int]], continuations: list[list[int]]) -> list[Request]:
        """Teacher-forced: each continuation fed token by token after its prompt, through the
        same steps, exits and KV handling as generation; each Request's `nll` holds every
        continuation token's -log p at the exit that read it out (its `exit_loops`)."""
        if len(prompts) != len(continuations) or any(not c for c in continuations):
            raise ValueError("score needs one non-empty continuation per prompt")
        return self.generate(prompts, max(map(len, continuations)), forced=continuations)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, forced=None) -> list[Request]:
        """Greedy continuations of token-id prompts, in input order (each Request's
        `tokens` and per-token `exit_loops`)."""
        requests = [Request(i, list(p), max_new_tokens if forced is None else len(forced[i]),
                            forced=None if forced is None else list(forced[i])) for i, p in enumerate(prompts)]
        self._scoring = forced is not None
        for r in requests:
            if not r.prompt:
                raise ValueError(f"prompt {r.index} is empty")
            if len(r.prompt) + max_new_tokens > self.cache.max_len:
                raise ValueError(f"prompt {r.index}: {len(r.prompt)} + {max_new_tokens} tokens exceed max_len "
                                 f"{self.cache.max_len}")
        waiting, rows = deque(requests), []
        while waiting or rows:
            joining = [waiting.popleft() for _ in range(min(len(waiting), len(self.cache.free)))]
            if joining:
                for r, row in zip(joining, self._prefill(joining)):
                    if row is None:  # done with its first token
                        self.cache.release(r.slot)
                    else:
                        rows.append(row)
            if rows:
                rows = self._step(rows)
        return requests

    def _exiting(self, hidden, loop, emitted=None):
        """(row indices, greedy tokens, their logits when scoring else None) of rows that
        leave after this loop: the last loop's, and with an exit rule the intermediate ones
        confident enough (`is_confident`). Rows whose token was already `emitted` (a bool
        per row) are not read out."""
        pending = torch.ones_like(loop, dtype=torch.bool) if emitted is None else ~emitted
        final = ((loop == self.loops - 1) & pending).nonzero().flatten()
        final_logits = exit_logits(self.model, hidden[final, -1])
        if self.exit_rule is None or self.loops == 1:
            return final, final_logits.argmax(-1), final_logits if self._scoring else None
        criterion, threshold = self.exit_rule
        inter = ((loop < self.loops - 1) & pending).nonzero().flatten()
        logits = exit_logits(self.model, hidden[inter, -1])
        confident = is_confident(exit_confidence(logits, criterion), criterion, threshold)
        leaving_logits = torch.cat([final_logits, logits[confident]])
        return (torch.cat([final, inter[confident]]), leaving_logits.argmax(-1),
                leaving_logits if self._scoring else None)

    def _step(self, rows: list[Row]) -> list[Row]:
        """Every row one loop deeper; rows that leave are read out and their requests' next
        tokens enter. Returns the rows of the next step."""
        hidden = torch.stack([row.hidden for row in rows])
        loop = torch.tensor([row.loop for row in rows], device=self.device)
        slot = torch.tensor([row.request.slot for row in rows], device=self.device)
        positions = torch.tensor([[row.position] for row in rows], device=self.device)
        length = int(positions.max()) + 1
        hidden = self._run_loop(hidden, loop, slot, positions, length)
        shadow = torch.tensor([row.shadow for row in rows], device=self.device)
        leaving, tokens, logits = self._exiting(hidden, loop, emitted=shadow)
        emitted = dict(zip(leaving.tolist(), tokens.tolist()))
        read = {i: None if logits is None else logits[j] for j, i in enumerate(leaving.tolist())}
        early = [i for i in emitted if rows[i].loop < self.loops - 1]
        if early and self.exit_kv == "propagate":
            self._propagate(hidden[early], loop[early], slot[early], positions[early], length)
        following = []
        for i, row in enumerate(rows):
            last = row.loop == self.loops - 1
            if i in emitted:
                nxt = self._emit(row.request, emitted[i], row.loop + 1, read[i], row.position + 1)
                following += [nxt] if nxt is not None else []
                if not last and self.exit_kv == "continue":  # runs on, emitted, to fill its deeper KV
                    following.append(Row(row.request, row.position, row.loop + 1, hidden[i], shadow=True))
                    continue
                self._retire(row)
            elif last and row.shadow:
                self._retire(row)
            else:
                row.hidden, row.loop = hidden[i], row.loop + 1
                following.append(row)
        return following

    def _propagate(self, hidden, loop, slot, positions, length: int) -> None:
        """KV of the depths an exited token skips, from its exit hidden state (CALM's state
        propagation): each deeper depth's attention reads that state as its input, writes
        its keys and values, and the rest of the layer is not run."""
        for deeper in range(1, self.loops):
            rows = (loop + deeper < self.loops).nonzero().flatten()
            if not len(rows):
                break
            for k in range(self.per_loop):
                depth = (loop[rows] + deeper) * self.per_loop + k
                self._run_layer(k, hidden[rows], depth, slot[rows], positions[rows], length, attention_only=True)
