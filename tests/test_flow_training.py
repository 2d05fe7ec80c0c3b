"""The flow-matching objective in training: --objective flow, fine-tuning an eps-model, the file.

Runs on 64 random 8x8 "digits" (``build.mnist_train`` replaced, as in tests/test_training.py) with
the tiny U-Net and T = 50, so each run takes about a second.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import diffusion_tutorial.training.loop as loop
import diffusion_tutorial.training.step as one_step
from diffusion_tutorial import pretrained
from diffusion_tutorial.core.flow_matching import velocity_from_eps_model, velocity_model
from diffusion_tutorial.samplers.flow import flow_sample
from diffusion_tutorial.training import build
from diffusion_tutorial.training.cli import parse_args
from diffusion_tutorial.training.config import ConfigError, TrainConfig, resume_mismatches
from diffusion_tutorial.training.loop import train

from .conftest import mnist_config


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(out: Path, **kw) -> TrainConfig:
    """Two steps of the tiny U-Net on ``fake_mnist``, no warm-up."""
    return mnist_config(out, **{"steps": 2, "warmup_steps": 0, **kw})


def test_flow_objective_exports_a_velocity_model(tmp_path, fake_mnist):
    """--objective flow: the network and its file say prediction 'velocity'; it samples with
    flow_sample once wrapped, and the eps-wrapper and a bare network are refused."""
    out = tmp_path / "w.safetensors"
    train(config(tmp_path / "run", objective="flow", sample_every=2, export=str(out)))
    assert list((tmp_path / "run").glob("samples_*.png"))  # the grid takes the flow sampler
    model, schedule = pretrained.load_file(out)
    assert model.config.prediction == "velocity"
    assert pretrained.card_file(out)["train_config"]["objective"] == "flow"
    x = torch.randn(2, 1, 8, 8)
    assert flow_sample(velocity_model(model, schedule), x, steps=2, progress=False).shape == x.shape
    with pytest.raises(TypeError, match="velocity_model"):
        velocity_from_eps_model(model, schedule)
    with pytest.raises(TypeError, match="flow_sample needs a velocity field"):
        flow_sample(model, x, steps=2)


def test_flow_fine_tune_starts_from_the_eps_models_weights(tmp_path, fake_mnist):
    """--init with an eps-model and --objective flow: same weights, read as a velocity network.

    Caught: the EMA made with warmup=not cfg.init (its average would keep the eps weights for
    ~1 / (1 - decay) steps: the step-200 EMA of a real fine-tune sampled garbage, FID 24x floor).
    """
    eps_file = tmp_path / "eps.safetensors"
    train(config(tmp_path / "a", export=str(eps_file)))
    cfg = config(tmp_path / "b", objective="flow", init=str(eps_file))
    net = build.build_model(cfg, build.mnist_train()[0])
    build.load_init(net, cfg, pretrained.load_file(eps_file)[1])
    want, _ = pretrained.load_file(eps_file)
    assert want.config.prediction == "eps" and net.config.prediction == "velocity"
    for key, value in want.state_dict().items():
        assert torch.equal(value, net.state_dict()[key]), key
    # The EMA forgets eps weights fine-tuned into a velocity network (it warms up, as from a
    # random start), but keeps the full decay when the init already predicts the same thing.
    train(cfg)
    train(config(tmp_path / "c", init=str(eps_file)))
    for run, warmup in (("b", True), ("c", False)):
        ema = torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)["ema"]
        assert ema["warmup"] is warmup, run


def test_the_loop_minimises_the_objectives_loss(tmp_path, fake_mnist, monkeypatch):
    """The loop takes flow_matching_loss under --objective flow, simple_loss by default."""
    calls = []

    def spy(name, f):
        def loss(*args, **kw):
            calls.append(name)
            return f(*args, **kw)

        return loss

    monkeypatch.setattr(one_step, "simple_loss", spy("eps", one_step.simple_loss))
    monkeypatch.setattr(loop, "flow_matching_loss", spy("flow", loop.flow_matching_loss))
    train(config(tmp_path / "e", steps=1))
    train(config(tmp_path / "f", steps=1, objective="flow"))
    assert calls == ["eps", "flow"]


def test_objective_option_and_its_checks(tmp_path):
    assert parse_args(["--out", str(tmp_path)]).objective == "eps"  # existing runs unchanged
    assert parse_args(["--objective", "flow", "--out", str(tmp_path)]).objective == "flow"
    with pytest.raises(SystemExit):
        parse_args(["--objective", "v"])
    with pytest.raises(ConfigError, match="--objective flow trains unconditional models"):
        config(tmp_path, objective="flow", conditional=True)
    # A resumed run keeps its objective; a checkpoint from before the option counts as eps.
    saved = dataclasses.asdict(config(tmp_path))  # a checkpoint's config
    cfg = config(tmp_path, objective="flow")
    assert resume_mismatches(saved, cfg) == ["--objective flow (checkpoint: eps)"]
    del saved["objective"]
    assert resume_mismatches(saved, config(tmp_path)) == []
