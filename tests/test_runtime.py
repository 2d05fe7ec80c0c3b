"""Tests for diffusion_tutorial.runtime (fast mode, device choice) and diffusion_tutorial.checks."""

from __future__ import annotations

import pytest
import torch

from diffusion_tutorial import checks, runtime


@pytest.mark.parametrize("value, fast", [("1", True), ("true", True), ("0", False), ("", False)])
def test_fast_mode_from_environment(monkeypatch, value, fast):
    monkeypatch.setenv(runtime.FAST_ENV, value)
    assert runtime.is_fast() is fast
    assert runtime.fast_or_full("small", "big") == ("small" if fast else "big")


def test_default_device_is_usable():
    device = runtime.default_device()
    assert torch.zeros(1, device=device).device.type == device.type


def test_expand_like_broadcasts_per_example():
    x = torch.zeros(3, 1, 4, 4)
    v = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    out = checks.expand_like(v, x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == x.dtype
    assert torch.equal((x + out)[:, 0, 0, 0], v.float())


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: checks.check_positive_int("steps", 0), ValueError, "steps must be >= 1, got 0"),
        (lambda: checks.check_int_in_range("t", 5, 1, 4), ValueError, r"t must be in 1\.\.4"),
        (lambda: checks.check_int_in_range("t", 1.0, 1, 4), TypeError, "t must be an int"),
        (lambda: checks.check_float_in_range("eta", -1.0, 0.0), ValueError, r"eta must be in \[0"),
        (
            lambda: checks.check_float_in_range("s", 0.0, 0.0, low_open=True),
            ValueError,
            r"s must be in \(0",
        ),
        (
            lambda: checks.check_float_tensor("x_0", torch.zeros(2, dtype=torch.uint8)),
            TypeError,
            "x_0 must be a floating-point tensor",
        ),
        (
            lambda: checks.check_finite("x_T", torch.tensor([0.0, float("nan")])),
            ValueError,
            "x_T must be finite",
        ),
        (
            lambda: checks.check_same_shape("x_0", torch.zeros(2), "x_t", torch.zeros(3)),
            ValueError,
            "x_0 and x_t must have the same shape",
        ),
    ],
)
def test_checks_name_argument_and_range(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_text_progress_prints_only_the_final_state(monkeypatch, capsys):
    monkeypatch.setenv(runtime.TEXT_PROGRESS_ENV, "1")
    for _ in runtime.tqdm(range(7), desc="work"):
        pass
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "work: 100%" in err and "7/7" in err
