"""RecursiveConfig and RecursiveForCausalLM: a transformers-native Recursive Transformer.

The model wraps the base family's own CausalLM (`self.base`), so embeddings, masks, rotary
embeddings, caches, logit soft-capping, loss and `generate()` are all transformers' code.
Only the decoder-layer list is changed: it holds one `DepthLayer` per original depth, and
each runs one of the K shared layers in `self.recursive_block` with that depth's own
LoRA, norms and identity (KV-cache slot, sliding/global attention, rotary type), through
that layer's `SharedSlot` (`self.shared_slots`, rrt.model.binding): the one way the model
and the serving engine run a shared layer at a depth.

Parameter names in a checkpoint:
    recursive_block.{k}.…                    the K shared (unique) layers
    base.model.layers.{l}.linears.{path}.…   depth l's LoRA A/B (and bias if per depth)
    base.model.layers.{l}.norms.{path}.…     depth l's norms (with per-depth norms)
    base.model.embed_tokens / norm / lm_head  as in the base family
"""
from __future__ import annotations

import contextlib
import copy
import functools

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.modeling_layers import GradientCheckpointingLayer

from .binding import SharedSlot
from .families import family_of, without_layers
from .relax import DepthLinear, DepthNorm, RelaxedLinear, is_norm, resolve_rank
from .sharing import check_layer_map, depth_to_slot, loop_index, preset_of, relabel

_PLAIN = (int, float, str, bool, type(None))


def _key(path: str) -> str:
    """ModuleDict keys cannot hold dots."""
    return path.replace(".", "__")


class RecursiveConfig(PreTrainedConfig):
    """`text_config` is the base model's own config, unchanged: its num_hidden_layers is the
    number of unrolled depths L (one KV-cache slot each), its layer_types the per-depth
    attention types. The fields below say how those depths share K = L/B layers."""

    model_type = "recursive"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    num_loops: int = 1
    sharing: str = "cycle"
    layer_map: list[int] | None = None  # depth -> shared slot
    init: str = "stepwise"
    init_sources: list[list[int]] | None = None  # slot -> original layers it was built from
    stepwise_rule: str = "ends"  # stepwise init: "ends" (first and last kept) or "start" (every B-th from 0)
    norm_init: str = "average"  # average init: shared norms averaged, the first source's, or unit
    lora_rank_attn: int | str = 0  # int or "full"
    lora_rank_mlp: int | str = 0
    lora_alpha: float | None = None  # LoRA output scale alpha/r; None: scale 1
    lora_init: str = "svd"
    per_depth_norms: bool = False
    seed: int = 0
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.layer_map is None:
            self.layer_map = depth_to_slot(self.text_config.num_hidden_layers, self.num_loops, self.sharing)
        else:
            self.set_layer_map(self.layer_map)
        # Tying lives in the base CausalLM's own config; mirror it for transformers' checks.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    def set_layer_map(self, layer_map) -> None:
        """Any tying pattern (depth -> unique layer, any labels: e.g. DLT's form, depth i -> the
        first depth j <= i it shares with), checked and stored in slot form (slots numbered by
        their first depth); `num_loops` and `sharing` then describe it (`custom`, 1 loop, when no
        preset gives it) and `init_sources` follows the relabelling."""
        given = check_layer_map(layer_map, self.text_config.num_hidden_layers)
        slots = relabel(given)
        if self.init_sources is not None:
            if len(self.init_sources) != len(set(given)):
                raise ValueError(f"init_sources has {len(self.init_sources)} entries, layer_map has "
                                 f"{len(set(given))} unique layers")
            if given != slots:  # the sources follow their layers
                old_of = {new: old for old, new in zip(given, slots)}
                labels = sorted(set(given))
                self.init_sources = [self.init_sources[labels.index(old_of[k])] for k in range(len(labels))]
        self.layer_map = slots
        self.num_loops, self.sharing = preset_of(slots, self.num_loops, self.sharing)

    @property
    def num_slots(self) -> int:
        return max(self.layer_map) + 1

    def rank_for(self, group: str) -> int | str:
        return self.lora_rank_attn if group == "attn" else self.lora_rank_mlp


class DepthLayer(GradientCheckpointingLayer):
    """Depth l of the unrolled model: runs its shared slot with depth l's own parameters.

    It owns depth l's LoRA (`linears`) and norms (`norms`, with per-depth norms) and runs
    `shared.at(l)`: the view of its shared block bound to them and to depth l's identity
    (layer_idx -> its own KV-cache slot; Gemma 2/3 sliding window and layer type), built once
    (`rrt.model.binding`). Gradient checkpointing happens here: the recomputation runs the
    same view, so the same depth.
    """

    def __init__(self, shared: SharedSlot, depth: int, loop: int,
                 linears: dict[str, DepthLinear], norms: dict[str, nn.Module]):
        super().__init__()
        self.depth, self.slot, self.loop = depth, shared.slot, loop
        self.__dict__["shared"] = shared  # not a submodule: its block is registered once, in recursive_block
        self.linears = nn.ModuleDict({_key(p): m for p, m in linears.items()})
        self.norms = nn.ModuleDict({_key(p): m for p, m in norms.items()})

    @property
    def block(self) -> nn.Module:
        """The shared decoder layer this depth runs (as registered: unbound)."""
        return self.shared.block

    def forward(self, *args, **kwargs):
        return self.shared.at(self.depth)(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, slot={self.slot}, loop={self.loop}"


def _plain_attrs(module: nn.Module) -> dict[str, object]:
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, _PLAIN)}


def _depth_identities(layer_cls, text_config, block: nn.Module, depths: list[int]):
    """For each depth, {module path: {attribute: value}}: the plain attributes (over the
    whole block) that the family's own constructor sets differently for that depth than for
    the block as built."""
    with torch.device("meta"):
        refs = {d: layer_cls(text_config, layer_idx=d) for d in depths}
    varying: set[tuple[str, str]] = set()
    for ref in refs.values():
        for path, sub in ref.named_modules():
            own = _plain_attrs(block.get_submodule(path))
            for attr, value in _plain_attrs(sub).items():
                if own.get(attr, object()) != value:
                    varying.add((path, attr))
    identities: dict[int, dict[str, dict[str, object]]] = {d: {} for d in depths}
    for path, attr in sorted(varying):
        for d in depths:
            identities[d].setdefault(path, {})[attr] = getattr(refs[d].get_submodule(path), attr)
    return identities


class RecursiveForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = RecursiveConfig
    base_model_prefix = "base"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["DepthLayer"]

    def __init__(self, config: RecursiveConfig):
        super().__init__(config)
        text = config.text_config
        self.family = family_of(text)
        layer_cls = self.family.layer_cls(text)
        layer_map = config.layer_map
        if len(layer_map) != text.num_hidden_layers:
            raise ValueError(f"layer_map has {len(layer_map)} depths, base model has {text.num_hidden_layers}")

        depths_of = [[d for d, s in enumerate(layer_map) if s == k] for k in range(config.num_slots)]
        self.recursive_block = nn.ModuleList(layer_cls(text, layer_idx=ds[0]) for ds in depths_of)
        with without_layers(text):
            self.base = self.family.causal_lm_cls(text)(text)

        depth_layers: list[DepthLayer | None] = [None] * len(layer_map)
        self.shared_slots: list[SharedSlot] = []  # slot k's binding API (rrt.model.binding)
        for slot, block in enumerate(self.recursive_block):
            identities = _depth_identities(layer_cls, text, block, depths_of[slot])
            linears, norms = self._relax_block(block)
            owns = {depth: ({p: make() for p, make in linears.items()}, {p: copy.deepcopy(n) for p, n in norms.items()})
                    for depth in depths_of[slot]}
            shared = SharedSlot(block, slot, {d: {**own_linears, **own_norms} for d, (own_linears, own_norms) in owns.items()},
                                identities)
            self.shared_slots.append(shared)
            for depth in depths_of[slot]:
                depth_layers[depth] = DepthLayer(shared, depth, loop_index(layer_map, depth), *owns[depth])
        self.base.set_submodule(self.family.layers_path, nn.ModuleList(depth_layers))
        self.post_init()
        if config.tie_word_embeddings:
            # The tied LM head is saved once, as the input embeddings, and re-tied on load: a
            # checkpoint without it is complete (Trainer's resume re-ties instead of warning
            # that `base.lm_head.weight` is missing).
            self._keys_to_ignore_on_save = [f"base.{k}" for k in (self.base._tied_weights_keys or {})]

    def _relax_block(self, block: nn.Module):
        """Swap the shared block's linears/norms for placeholders where depths own something.
        Returns per-path factories for each depth's DepthLinear and the norm templates."""
        cfg = self.config
        per_depth = cfg.per_depth_norms
        linears, norms = {}, {}
        for path, module in list(block.named_modules()):
            if isinstance(module, nn.Linear):
                rank = resolve_rank(cfg.rank_for(self.family.module_group(path)), module.in_features, module.out_features)
                own_bias = per_depth and module.bias is not None
                if rank == 0 and not own_bias:
                    continue
                scale = 1.0 if cfg.lora_alpha is None or rank == 0 else cfg.lora_alpha / rank
                shared = RelaxedLinear(module.in_features, module.out_features, bias=module.bias is not None and not own_bias,
                                       device=module.weight.device, dtype=module.weight.dtype)
                block.set_submodule(path, shared)
                linears[path] = functools.partial(DepthLinear, module.in_features, module.out_features, rank,
                                                  scale, own_bias)
            elif per_depth and is_norm(module):
                norms[path] = module
                block.set_submodule(path, DepthNorm())
        return linears, norms

    # --- plumbing: the base CausalLM does the work -------------------------------------
    @property
    def depth_layers(self) -> nn.ModuleList:
        return self.base.get_submodule(self.family.layers_path)

    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.base.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    def _init_weights(self, module):
        if isinstance(module, DepthLinear):
            # LoRA as PEFT (A random, B zero: starts as pure sharing, yet trains); own bias zero.
            # Conversion from a pretrained model overwrites both (convert.py).
            module.reset_lora()
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        else:
            self.base._init_weights(module)

    def _initialize_missing_keys(self, is_quantized: bool) -> None:
        """`from_pretrained` of a checkpoint that lacks some tensors (a partial copy, another
        config): transformers initialises the missing ones through `_init_weights`, but hands
        every module inside `self.base` to the base family's own, which knows no DepthLinear
        and would leave its LoRA as uninitialised memory (NaN logits). Here each depth's
        incomplete LoRA pair gets B = 0 (with a fresh Kaiming A), so that depth runs its
        shared layer unchanged, and a missing own bias is zero (`DepthLinear.fill_missing`);
        missing norms and shared weights get the family's init. The load still reports them
        as missing; `rrt` refuses such a directory (`rrt.model.load.load_model_dir`). Loading
        only: a model built fresh initialised its DepthLinears when they were made."""
        super()._initialize_missing_keys(is_quantized)
        depth_linears = [m for m in self.modules() if isinstance(m, DepthLinear)]
        gathered = contextlib.nullcontext()
        if is_deepspeed_zero3_enabled() and not is_quantized:  # partitioned parameters: as transformers does
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters([p for m in depth_linears for p in m.parameters()],
                                                         modifier_rank=0)
        with gathered:
            for module in depth_linears:
                module.fill_missing()

    def _set_gradient_checkpointing(self, *args, **kwargs):
        super()._set_gradient_checkpointing(*args, **kwargs)
        # Checkpoint whole depths (DepthLayer): the shared block as registered never runs
        # (its depths' views do), and one checkpoint per depth is what the depth recomputes.
        for block in self.recursive_block:
            block.gradient_checkpointing = False

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        return self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels,
                         use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)

    def generate(self, *args, **kwargs):
        return self.base.generate(*args, **kwargs)


if __name__ == "rrt.model.modeling":
    # `import rrt` makes the `recursive` type known to the Auto classes. Not as an export's
    # remote code (rrt.model.export_remote): there transformers registers the classes itself,
    # and a process that also imported rrt would otherwise register the type twice.
    AutoConfig.register(RecursiveConfig.model_type, RecursiveConfig)
    AutoModelForCausalLM.register(RecursiveConfig, RecursiveForCausalLM)
