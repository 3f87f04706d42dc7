"""train.precision / eval.precision: which runs compute in bf16 (rrt.model.precision)."""
import warnings

import pytest
import torch

from rrt.model import precision
from rrt.settings import EvalSettings, SettingError, TrainSettings


@pytest.mark.parametrize("native", [True, False])
def test_auto_and_fp32_never_bf16_on_cpu_and_auto_bf16_on_gpu(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.use_bf16("auto", "cpu") is False
    assert precision.use_bf16("fp32", "cpu") is False
    assert precision.use_bf16("fp32", "cuda") is False
    assert precision.use_bf16("auto", "cuda") is True
    assert precision.use_bf16("bf16", "cuda:0") is True


def test_bf16_on_a_cpu_needs_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.use_bf16("bf16", "cpu") is True
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        assert precision.use_bf16("bf16", "cpu") is False


def test_bad_precision_is_one_line_naming_the_key():
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.use_bf16("fp16", "cpu")
    with pytest.raises(SettingError, match="precision"):
        TrainSettings.from_dict({"precision": "fp16"})
    with pytest.raises(SettingError, match="precision"):
        EvalSettings.from_dict({"precision": "half"})


def test_autocast_runs_matmuls_in_bf16_only_when_enabled():
    a = torch.randn(4, 8)
    b = torch.randn(8, 3)
    with precision.autocast(True):
        assert (a @ b).dtype == torch.bfloat16
    with precision.autocast(False):
        assert (a @ b).dtype == torch.float32
