"""Tests for the training loop: exact resumption, loss rows, time limit, export, init, NaN guard.

Image runs use ``fake_mnist``: 64 random 8x8 "digits" through the same code path as MNIST
(``build.mnist_train`` is the only thing replaced), so they take a second, not a minute; one
slow test trains on the real MNIST files.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import diffusion_tutorial.training.step as one_step
from diffusion_tutorial import pretrained
from diffusion_tutorial.core.schedules import linear_schedule
from diffusion_tutorial.training import build
from diffusion_tutorial.training.build import autocast_dtype
from diffusion_tutorial.training.loop import batch_indices, train
from diffusion_tutorial.training.step import learning_rate

from .conftest import mnist_available, mnist_config, toy_config


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run faster on one thread; two threads on a busy CPU wait for each other
    (30 s instead of 1 s for six U-Net steps on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    return {**state["model"], **{f"ema.{k}": v for k, v in state["ema"]["model"].items()}}


@pytest.mark.parametrize("step", [0, 5, 12])
def test_batches_of_an_epoch_form_a_permutation(step):
    # n = 50, batch 10: 5 batches per epoch; the union of an epoch's batches is every index once.
    epoch_start = step - step % 5
    idx = torch.cat([batch_indices(s, 50, 10, seed=3) for s in range(epoch_start, epoch_start + 5)])
    assert torch.equal(idx.sort().values, torch.arange(50))
    assert torch.equal(batch_indices(step, 50, 10, seed=3), batch_indices(step, 50, 10, seed=3))


@pytest.mark.parametrize(
    ("make", "conditional"),
    [(toy_config, False), (mnist_config, False), (mnist_config, True)],
    ids=["toy", "images", "images-conditional"],
)
def test_resume_gives_the_same_losses_and_weights(tmp_path, fake_mnist, make, conditional):
    # Exact equality (no tolerance): on CPU the resumed run must replay the very same arithmetic.
    whole = train(make(tmp_path / "whole", conditional=conditional))
    first = train(make(tmp_path / "split", conditional=conditional, steps=3))
    second = train(make(tmp_path / "split", conditional=conditional, resume=True))
    assert first.step == 3 and second.step == 6
    assert first.losses + second.losses == whole.losses
    got = [float(r["loss"]) for r in rows(tmp_path / "split" / "loss.csv")]
    assert got == [float(r["loss"]) for r in rows(tmp_path / "whole" / "loss.csv")]
    a, b = (
        weights(tmp_path / "whole" / "checkpoint.pt"),
        weights(tmp_path / "split" / "checkpoint.pt"),
    )
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("stop", [2, 3, 4])
def test_a_loss_row_that_straddles_the_resume_point_equals_the_uninterrupted_row(tmp_path, stop):
    # log_every=3 over 7 steps: rows 3, 6 and the end row 7. Stopped at `stop` (before, on and
    # after a row), the resumed loss.csv must hold the very rows of the uninterrupted run.
    def run(out: Path, **kw) -> list[tuple[str, str, str]]:
        train(toy_config(out, **{"steps": 7, "log_every": 3, **kw}))
        return [(r["step"], r["loss"], r["lr"]) for r in rows(out / "loss.csv")]

    whole = run(tmp_path / "whole")
    assert [r[0] for r in whole] == ["3", "6", "7"]
    run(tmp_path / "split", **{"steps": stop})
    assert run(tmp_path / "split", resume=True) == whole


def test_cosine_lr_decay_warms_up_then_halves_at_midpoint_and_resumes_exactly(tmp_path):
    lrs = [learning_rate(s, lr=1e-3, steps=104, warmup_steps=4, cosine=True) for s in range(104)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # linear warm-up
    assert lrs[4] == pytest.approx(1e-3) and lrs[54] == pytest.approx(5e-4)  # cos(0), cos(pi/2)
    assert all(a > b for a, b in zip(lrs[4:-1], lrs[5:], strict=True)) and lrs[-1] > 0
    assert learning_rate(90, lr=1e-3, steps=104, warmup_steps=4) == 1e-3  # no decay: constant
    # A run logs the rate of each step it took, and a resumed run continues the same curve.
    whole = train(toy_config(tmp_path / "whole", lr_decay="cosine"))
    train(toy_config(tmp_path / "split", lr_decay="cosine", steps=3))
    second = train(toy_config(tmp_path / "split", lr_decay="cosine", resume=True))
    assert second.losses == whole.losses[3:]
    run = toy_config(tmp_path, lr_decay="cosine")
    schedule = dict(lr=run.lr, steps=run.steps, warmup_steps=run.warmup_steps, cosine=True)
    logged = rows(tmp_path / "split" / "loss.csv")
    assert [float(r["lr"]) for r in logged] == pytest.approx(
        [learning_rate(int(r["step"]) - 1, **schedule) for r in logged], rel=1e-3
    )  # loss.csv keeps 4 significant digits


def test_time_limit_stops_cleanly_and_exports(tmp_path, fake_mnist):
    cfg = mnist_config(
        tmp_path,
        steps=100,
        sample_every=1000,
        time_limit_min=0.0,
        export=str(tmp_path / "w.safetensors"),
    )
    result = train(cfg)
    assert result.stopped_by_time_limit and result.step == 1
    assert [r["step"] for r in rows(tmp_path / "loss.csv")] == ["1"]  # the end row
    assert list(tmp_path.glob("samples_*.png"))
    model, schedule = pretrained.load_file(tmp_path / "w.safetensors")
    assert schedule.T == 50
    ema = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["ema"]["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, ema[key]), key
    meta = pretrained.card_file(tmp_path / "w.safetensors")
    assert meta["steps"] == 1 and meta["parameters"] == model.num_parameters()


def test_init_starts_from_exported_weights(tmp_path, fake_mnist):
    # Run 1 exports its EMA weights; the network that run 2 builds and fills with --init must
    # hold exactly those weights, and run 2's model card must say where they came from.
    first = tmp_path / "first.safetensors"
    train(mnist_config(tmp_path / "a", steps=2, export=str(first)))
    cfg = mnist_config(tmp_path / "b", steps=1, init=str(first), export=str(tmp_path / "b.st"))
    got = build.build_model(cfg, build.mnist_train()[0])
    build.load_init(got, cfg, linear_schedule(cfg.T))
    want, _ = pretrained.load_file(first)
    for key, value in want.state_dict().items():
        assert torch.equal(value, got.state_dict()[key]), key
    train(cfg)
    second = tmp_path / "b.st"
    card = pretrained.card_file(second)  # steps count this run; "init" says where it started
    assert card["steps"] == 1
    assert card["init"] == {
        "from": str(first),
        "sha256": pretrained.sha256_file(first),
        "steps": 2,
        "batch_size": 8,
        "hardware": pretrained.card_file(first)["hardware"],
        "wall_time_s": pretrained.card_file(first)["wall_time_s"],
    }


@pytest.mark.slow
@pytest.mark.skipif(not mnist_available(), reason="MNIST files not found offline")
def test_two_steps_on_real_mnist_resume_exactly(tmp_path):
    # The real data path (60,000 images read from disk) once; everything else uses fake_mnist.
    whole = train(mnist_config(tmp_path / "whole", steps=2, T=1000))
    train(mnist_config(tmp_path / "split", steps=1, T=1000))
    second = train(mnist_config(tmp_path / "split", steps=2, T=1000, resume=True))
    assert second.losses == whole.losses[1:]


def test_bad_init_raises_before_the_folder_changes(tmp_path):
    with pytest.raises(ValueError, match="--init must be one of"):
        train(toy_config(tmp_path, init=str(tmp_path / "missing.safetensors")))
    with pytest.raises(ValueError, match="different network"):
        train(toy_config(tmp_path, init="mnist", T=1000))  # the shipped U-Net into a 2-D MLP
    assert list(tmp_path.iterdir()) == []


def _nan_after(monkeypatch, good_steps: int) -> None:
    """Make the loss NaN from step good_steps + 1 on (NaN gradients, then NaN weights)."""
    real, calls = one_step.simple_loss, []

    def nan_loss(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) > good_steps else loss

    monkeypatch.setattr(one_step, "simple_loss", nan_loss)


@pytest.mark.parametrize("grad_clip", [1.0, None])
def test_a_nan_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(
    tmp_path, monkeypatch, grad_clip
):
    # Rows only at the end (log_every > steps) but a checkpoint every step: the checkpoint of
    # step 2 must survive, never be replaced by NaN weights, and the run must fail.
    _nan_after(monkeypatch, good_steps=2)
    cfg = toy_config(tmp_path, log_every=100, checkpoint_every=1, grad_clip=grad_clip)
    with pytest.raises(FloatingPointError, match="NaN or inf by step 3"):
        train(cfg)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "checkpoint.pt").values())


def test_bf16_on_cpu_only_when_asked():
    cpu = torch.device("cpu")
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp16", cpu) is None


def test_toy_run_writes_a_histogram_grid(tmp_path):
    train(toy_config(tmp_path, steps=2, sample_every=2))
    assert (tmp_path / "samples_0000002.png").exists()
