"""Each model family rrt supports is one spec (rrt.model.families): complete, registered,
covered by the tests' tiny models, and the one place the serving engine and `rrt plan`
read family knowledge from."""
import dataclasses
import importlib
import inspect
import pkgutil

import pytest
from torch import nn

import rrt.model.families
from rrt.model.families import FAMILIES, Family, family_of
from rrt.model.shapes import HUB_SHAPES, shape_config
from rrt.serve.engine import DepthwiseEngine
from rrt.train.budget import activation_bytes_per_depth, model_size

from .conftest import _configs, make_tiny


def _tiny(name: str, layers: int = 2):
    """The tests' tiny model (tests/conftest.py) of the family with model_type `name`."""
    (key,) = [k for k, (_, config) in _configs(layers).items() if config.model_type == name]
    return make_tiny(key, layers=layers)


def test_the_tests_have_a_tiny_model_of_every_family():
    assert sorted(config.model_type for _, config in _configs(2).values()) == sorted(FAMILIES)


def test_every_family_module_is_registered():
    package = rrt.model.families
    modules = sorted(info.name for info in pkgutil.iter_modules(package.__path__) if info.name != "spec")
    for name in modules:
        module = importlib.import_module(f"{package.__name__}.{name}")
        specs = [v for v in vars(module).values() if isinstance(v, Family)]
        assert len(specs) == 1, f"families/{name}.py defines {len(specs)} Family specs, not 1"
        assert FAMILIES.get(specs[0].name) is specs[0], \
            f"families/{name}.py: {specs[0].name!r} is not in FAMILIES (families/__init__.py)"
    assert len(FAMILIES) == len(modules)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_spec_fits_its_transformers_classes(name):
    spec = FAMILIES[name]
    model = _tiny(name)
    assert family_of(model.config) is spec
    assert spec.causal_lm_cls(model.config) is type(model)
    layers = model.get_submodule(spec.layers_path)
    assert isinstance(layers, nn.ModuleList) and len(layers) == 2
    layer = layers[0]
    assert spec.layer_cls(model.config) is type(layer)
    assert type(model.get_submodule(spec.norm_path)).__name__.endswith("Norm")
    assert "Rotary" in type(model.get_submodule(spec.rotary_path)).__name__
    assert type(getattr(layer, spec.attention_norm)).__name__.endswith("Norm")
    # Every linear of a layer is attention or MLP, and both groups have some.
    linears = [p for p, m in layer.named_modules() if isinstance(m, nn.Linear)]
    assert {spec.module_group(p) for p in linears} == {"attn", "mlp"}
    assert spec.reads_residual <= {p.rsplit(".", 1)[-1] for p in linears}
    # The engine passes its cache as this argument to the layer, and the layer to its attention.
    for module in (layer, getattr(layer, spec.attn)):
        assert spec.cache_kwarg in inspect.signature(type(module).forward).parameters, type(module).__name__
    for hub_id, fields in spec.hub_shapes.items():
        config = shape_config(HUB_SHAPES[hub_id])
        assert family_of(config) is spec and HUB_SHAPES[hub_id] == {"model_type": name, **fields}


def test_hub_shapes_are_the_specs():
    assert sorted(HUB_SHAPES) == sorted(h for spec in FAMILIES.values() for h in spec.hub_shapes)


def test_an_incomplete_spec_fails_with_one_line():
    fields = {f.name: getattr(FAMILIES["llama"], f.name) for f in dataclasses.fields(Family)}
    del fields["activation_coeffs"]
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'activation_coeffs'") as e:
        Family(**fields)
    assert "\n" not in str(e.value)
    bad = [("activation_coeffs", (26, 4, 4), "activation_coeffs must be 4 non-negative ints"),
           ("final_bytes", 0, "final_bytes must be a positive int"),
           ("cache_kwarg", "", "cache_kwarg must be a non-empty string")]
    for key, value, message in bad:
        with pytest.raises(ValueError, match=f"^family 'llama': {message}") as e:
            Family(**{**fields, "activation_coeffs": (26, 4, 4, 8), key: value})
        assert "\n" not in str(e.value)


def test_an_unregistered_family_is_refused_by_name():
    model = _tiny("llama")
    model.config.model_type = "llama_twin"
    with pytest.raises(ValueError, match=r"^unsupported model family 'llama_twin'; supported: llama, gemma"):
        DepthwiseEngine(model)
    with pytest.raises(ValueError, match=r"^unsupported model family 'llama_twin'"):
        activation_bytes_per_depth(model.config)


def test_a_registered_spec_is_what_the_engine_and_plan_read(monkeypatch):
    """Registering a spec is all it takes: a twin of llama under another name with other
    plan coefficients is served exactly as llama, and planned with its own numbers."""
    llama = FAMILIES["llama"]
    twin = dataclasses.replace(llama, name="llama_twin", activation_coeffs=(30, 4, 4, 8), final_bytes=7,
                               reads_residual=frozenset())
    monkeypatch.setitem(FAMILIES, "llama_twin", twin)
    model = _tiny("llama")
    prompts = [[1, 2, 3], [4, 5]]
    expected = [r.tokens for r in DepthwiseEngine(model, max_batch=2, max_len=16).generate(prompts, 4)]
    config = model.config
    as_llama = (activation_bytes_per_depth(config), activation_bytes_per_depth(config, 4),
                model_size(config, "original")["final_bytes"])
    config.model_type = "llama_twin"
    assert family_of(config) is twin
    assert [r.tokens for r in DepthwiseEngine(model, max_batch=2, max_len=16).generate(prompts, 4)] == expected
    d = config.hidden_size
    assert activation_bytes_per_depth(config) == as_llama[0] + 4 * d  # c_d 30 instead of 26
    # A LoRA no longer keeps a bf16 copy of the residual for q, k, v, gate and up: 2·d each.
    assert activation_bytes_per_depth(config, 4) == as_llama[1] + 4 * d - 5 * 2 * d
    assert model_size(config, "original")["final_bytes"] == as_llama[2] - 3 * d == 7 * d
