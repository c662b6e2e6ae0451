"""Which dtype a model gets when models.yaml says `auto`."""

from __future__ import annotations

import pytest
import torch

from server.config import ModelSpec
from server.models import loader


def _spec(dtype: str = "auto") -> ModelSpec:
    return ModelSpec.model_validate({"id": "m", "source": {"path": "/m"}, "dtype": dtype})


@pytest.mark.parametrize("native_bf16", [False, True])
def test_auto_is_float32_on_every_cpu(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    """bfloat16 would make a greedy answer depend on the rest of the batch (README: dtype)."""
    monkeypatch.setattr(loader, "_cpu_has_native_bf16", lambda: native_bf16)
    assert loader.pick_dtype(_spec(), "cpu") == torch.float32


def test_an_explicit_dtype_is_kept_and_a_reduced_one_on_the_cpu_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = _spec("bfloat16")
    assert loader.pick_dtype(spec, "cpu") == torch.bfloat16
    with caplog.at_level("WARNING"):
        loader.warn_about_dtype(spec, torch.bfloat16, "cpu")
        loader.warn_about_dtype(_spec("float32"), torch.float32, "cpu")
    warned = [r.message for r in caplog.records]
    assert len(warned) == 1 and "greedy output may change" in warned[0]
