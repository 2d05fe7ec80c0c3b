"""Tests for diffusion_tutorial.pretrained: safetensors round trip, metadata, SHA-256 checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from diffusion_tutorial import model_files, pretrained
from diffusion_tutorial.core.schedules import SCHEDULES, cosine_schedule, linear_schedule
from diffusion_tutorial.evaluation.classifier import MNISTClassifier
from diffusion_tutorial.networks.autoencoder import Autoencoder
from diffusion_tutorial.networks.unet import UNet, UNetConfig

from .test_training import one_thread  # noqa: F401 (fixture: tiny networks, one thread)

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_heads=2, T=50)
SCHEDULE = {"name": "linear", "T": 50}


@pytest.fixture
def tiny_model() -> UNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet(TINY).eval()


@pytest.fixture
def shipped(tmp_path, monkeypatch, tiny_model):
    """Pretend ``tiny_model`` is the shipped "mnist" checkpoint, in a temporary weights folder."""
    path = pretrained.save(tmp_path / "mnist.safetensors", tiny_model, schedule=SCHEDULE, steps=7)
    entry = pretrained.WeightsEntry(
        "mnist.safetensors", pretrained.sha256_file(path), "retrain-cmd"
    )
    monkeypatch.setitem(pretrained.REGISTRY, "mnist", entry)
    monkeypatch.setattr(pretrained, "weights_path", lambda filename: tmp_path / filename)
    return path


def test_save_load_round_trip(tmp_path, tiny_model, generator):
    path = pretrained.save(tmp_path / "m.safetensors", tiny_model, schedule=SCHEDULE)
    model, schedule = pretrained.load_file(path)
    assert model.config == tiny_model.config and not model.training
    for (name, a), b in zip(
        tiny_model.state_dict().items(), model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name  # bit-exact: safetensors stores the raw float32
    torch.testing.assert_close(schedule.alpha_bar, linear_schedule(50).alpha_bar, rtol=0, atol=0)
    x_t, t = torch.randn(2, 1, 28, 28, generator=generator), torch.tensor([1, 50])
    with torch.no_grad():
        assert torch.equal(model(x_t, t), tiny_model(x_t, t))


def test_save_writes_json_metadata_atomically(tmp_path, tiny_model):
    path = pretrained.save(
        tmp_path / "sub" / "m.safetensors",
        tiny_model,
        schedule={"name": "cosine", "T": 50},
        steps=1000,
        metrics={"fid": 1.5},
    )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["unet_config"]) == json.loads(
        json.dumps(dataclasses.asdict(tiny_model.config))
    )
    assert json.loads(meta["schedule"]) == {"name": "cosine", "T": 50}
    assert json.loads(meta["steps"]) == 1000 and json.loads(meta["metrics"]) == {"fid": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temp file left
    _, schedule = pretrained.load_file(path)
    torch.testing.assert_close(schedule.alpha_bar, cosine_schedule(50).alpha_bar, rtol=0, atol=0)


def test_load_and_card_of_a_registered_checkpoint(shipped, tiny_model):
    model, _ = pretrained.load("mnist")
    for (name, a), b in zip(
        tiny_model.state_dict().items(), model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    card = pretrained.card("mnist")
    assert card["steps"] == 7 and card["schedule"] == SCHEDULE
    assert pretrained.verified_path("mnist") == shipped
    assert card["unet_config"]["base_channels"] == TINY.base_channels


def test_corrupted_file_is_refused_before_loading(shipped):
    data = bytearray(shipped.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last tensor byte: still a readable file, wrong weights
    shipped.write_bytes(bytes(data))
    with pytest.raises(pretrained.ChecksumError, match="expected .*retrain-cmd"):
        pretrained.load("mnist")
    with pytest.raises(pretrained.ChecksumError):
        pretrained.card("mnist")
    with pytest.raises(pretrained.ChecksumError):
        pretrained.verified_path("mnist")


def test_resolve_weights_checks_a_shipped_name_and_passes_a_path_through(shipped, tmp_path):
    # --init takes a shipped name (its file, hash-checked) or a path of one's own (as given)
    assert pretrained.resolve_weights("mnist") == shipped
    own = tmp_path / "run" / "mnist"  # a path that happens to end in a registered name
    assert pretrained.resolve_weights(own) == own
    assert pretrained.resolve_weights(str(own)) == own
    data = bytearray(shipped.read_bytes())
    data[-1] ^= 0xFF
    shipped.write_bytes(bytes(data))
    with pytest.raises(pretrained.ChecksumError):
        pretrained.resolve_weights("mnist")


def test_missing_file_gives_a_clear_error(shipped):
    shipped.unlink()
    with pytest.raises(FileNotFoundError, match="missing.*Reinstall.*retrain-cmd"):
        pretrained.load("mnist")


def test_unshipped_checkpoint_says_how_to_train_it(monkeypatch):
    monkeypatch.setitem(pretrained.REGISTRY, "mnist", pretrained.WeightsEntry("x", None, "cmd"))
    with pytest.raises(FileNotFoundError, match="not been shipped.*cmd"):
        pretrained.load("mnist")


def test_load_file_with_sha256(tmp_path, tiny_model):
    path = pretrained.save(tmp_path / "m.safetensors", tiny_model, schedule=SCHEDULE)
    pretrained.load_file(path, sha256=pretrained.sha256_file(path))  # right hash: loads
    with pytest.raises(pretrained.ChecksumError):
        pretrained.load_file(path, sha256="0" * 64)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda p, m: pretrained.load("cifar10"), ValueError),
        (lambda p, m: pretrained.card("nope"), ValueError),
        (lambda p, m: pretrained.load_file(p / "absent.safetensors"), FileNotFoundError),
        (lambda p, m: pretrained.card_file(p / "absent.safetensors"), FileNotFoundError),
        (
            lambda p, m: pretrained.save(p / "a", torch.nn.Linear(2, 2), schedule=SCHEDULE),
            TypeError,
        ),
        (
            lambda p, m: pretrained.save(p / "a", m, schedule={"name": "sigmoid", "T": 5}),
            ValueError,
        ),
        (lambda p, m: pretrained.save(p / "a", m, schedule={"name": "linear"}), ValueError),
        (
            lambda p, m: pretrained.save(p / "a", m, schedule=SCHEDULE, schedule_x=object()),
            TypeError,
        ),
        (lambda p, m: pretrained.save(p / "a", m, schedule=SCHEDULE, unet_config=1), ValueError),
    ],
)
def test_bad_arguments_raise(call, error, tmp_path, tiny_model):
    with pytest.raises(error):
        call(tmp_path, tiny_model)


def test_load_file_refuses_a_classifier_file(tmp_path):
    path = pretrained.save_classifier(tmp_path / "c.safetensors", MNISTClassifier())
    with pytest.raises(ValueError, match="unet_config"):
        pretrained.load_file(path)


def test_classifier_round_trip_and_hash(tmp_path, generator):
    clf = MNISTClassifier().eval()
    path = pretrained.save_classifier(tmp_path / "c.safetensors", clf, test_accuracy=0.5)
    loaded = pretrained.load_classifier(path, sha256=pretrained.sha256_file(path))
    x = torch.randn(3, 1, 28, 28, generator=generator)
    with torch.no_grad():
        assert torch.equal(loaded(x), clf(x))
    with pytest.raises(pretrained.ChecksumError):
        pretrained.load_classifier(path, sha256="f" * 64)


@pytest.mark.parametrize("name", [*pretrained.REGISTRY, "mnist-classifier"])
def test_shipped_files_match_the_registry(name):
    # Every registered hash must describe a file that is really in the package.
    entry = pretrained._entry(name)
    if entry.sha256 is None:
        pytest.skip(f"{name} not shipped yet (no hash in pretrained.REGISTRY)")
    path = pretrained.weights_path(entry.filename)
    assert path.is_file(), f"{path} missing"
    assert pretrained.sha256_file(path) == entry.sha256
    assert path.stat().st_size <= 8 * 2**20  # the limit: at most 8 MB per checkpoint
    if name == "mnist-autoencoder":  # not a denoiser: the autoencoder alone, no schedule
        assert isinstance(pretrained.load(name), Autoencoder)
    elif name != "mnist-classifier":
        model, schedule = pretrained.load(name)
        assert schedule.T == model.config.T
    else:
        assert isinstance(pretrained.load_classifier(), MNISTClassifier)


def test_weights_path_points_into_the_package():
    assert pretrained.weights_path("x.safetensors").parent == (
        Path(pretrained.__file__).parent / "weights"
    )


@pytest.mark.parametrize(
    ("schedule", "match"),
    [({"name": "linear", "T": 0}, "int >= 1"), ({"name": "linear", "T": 40}, "model's T = 50")],
)
def test_save_refuses_a_schedule_whose_T_is_not_the_models(tmp_path, tiny_model, schedule, match):
    with pytest.raises(ValueError, match=match):
        pretrained.save(tmp_path / "m.safetensors", tiny_model, schedule=schedule)
    assert list(tmp_path.iterdir()) == []


def test_load_file_refuses_a_T500_schedule_with_a_T1000_model(tmp_path):
    # Written around save's check, as another tool (or an older version) might have done.
    model = UNet(dataclasses.replace(TINY, T=1000))
    meta = {
        "unet_config": json.dumps(dataclasses.asdict(model.config)),
        "schedule": json.dumps({"name": "linear", "T": 500}),
    }
    path = model_files._write(tmp_path / "m.safetensors", model, meta)
    with pytest.raises(ValueError, match="do not fit.*model's T = 1000.*got 500"):
        pretrained.load_file(path)


def test_every_registered_schedule_round_trips(tmp_path, tiny_model):
    for name, make in SCHEDULES.items():
        path = pretrained.save(
            tmp_path / f"{name}.st", tiny_model, schedule={"name": name, "T": 50}
        )
        _, schedule = pretrained.load_file(path)
        torch.testing.assert_close(schedule.alpha_bar, make(50).alpha_bar, rtol=0, atol=0)


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, tiny_model, monkeypatch):
    path = pretrained.save(tmp_path / "m.safetensors", tiny_model, schedule=SCHEDULE)
    before = path.read_bytes()

    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(model_files, "_st_save_file", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        pretrained.save(path, tiny_model, schedule=SCHEDULE, steps=2)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


# ------------------------------------------------------------- reliability II (issue 23): files


def test_save_keeps_schedule_parameters_so_the_file_loads_back_the_same_schedule(
    tmp_path, tiny_model
):
    # Silently wrong before: beta_end was written but ignored, so beta_T came back as 0.02.
    spec = {"name": "linear", "T": 50, "beta_end": 0.05}
    path = pretrained.save(tmp_path / "m.safetensors", tiny_model, schedule=spec)
    _, schedule = pretrained.load_file(path)
    expected = linear_schedule(50, beta_end=0.05)
    torch.testing.assert_close(schedule.beta, expected.beta, rtol=0, atol=0)
    assert schedule.beta[-1].item() == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"beta_end": "x"}, "beta_end"),  # an invalid value was written
        ({"beta_end": 2.0}, "beta_end"),  # out of range for a beta
        ({"max_beta": 0.5}, "max_beta.*linear.*allowed.*beta_end"),  # a cosine parameter
        ({"beta_end": float("nan")}, "beta_end"),
    ],
)
def test_save_refuses_schedule_values_that_would_not_load_back(tmp_path, tiny_model, extra, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pretrained.save(
            tmp_path / "m.safetensors", tiny_model, schedule={"name": "linear", "T": 50, **extra}
        )
    assert list(tmp_path.iterdir()) == []


def test_every_kind_that_save_writes_loads_back(tmp_path, generator):
    from diffusion_tutorial.networks.mlp import MLPConfig, MLPDenoiser

    # Data loss before: save(path, MLPDenoiser(...)) wrote a file load_file could not read.
    mlp = MLPDenoiser(MLPConfig(hidden=16, num_blocks=1, T=50)).eval()
    path = pretrained.save(tmp_path / "mlp.safetensors", mlp, schedule=SCHEDULE)
    assert pretrained.card_file(path)["kind"] == "mlp"
    model, schedule = pretrained.load_file(path)
    assert isinstance(model, MLPDenoiser) and model.config == mlp.config and schedule.T == 50
    x, t = torch.randn(3, 2, generator=generator), torch.tensor([1, 2, 50])
    with torch.no_grad():
        assert torch.equal(model(x, t), mlp(x, t))
    clf_path = pretrained.save_classifier(tmp_path / "c.safetensors", MNISTClassifier())
    assert pretrained.card_file(clf_path)["kind"] == "classifier"


def test_the_unet_file_records_its_kind(tmp_path, tiny_model):
    path = pretrained.save(tmp_path / "m.safetensors", tiny_model, schedule=SCHEDULE)
    assert pretrained.card_file(path)["kind"] == "unet"


def test_save_classifier_refuses_a_unet_and_save_refuses_a_classifier(tmp_path, tiny_model):
    # Data loss before: save_classifier(path, unet) wrote a file load_classifier could not read.
    with pytest.raises(TypeError, match="save_classifier.*MNISTClassifier.*pretrained.save"):
        pretrained.save_classifier(tmp_path / "c.safetensors", tiny_model)
    with pytest.raises(TypeError, match="save_classifier"):
        pretrained.save(tmp_path / "c.safetensors", MNISTClassifier(), schedule=SCHEDULE)
    assert list(tmp_path.iterdir()) == []


def test_load_file_names_the_loader_of_a_classifier_file(tmp_path):
    path = pretrained.save_classifier(tmp_path / "c.safetensors", MNISTClassifier())
    with pytest.raises(ValueError, match=f"{path}.*classifier.*load_classifier"):
        pretrained.load_file(path)


def test_an_autoencoder_file_names_its_own_loader(tmp_path):
    from diffusion_tutorial.networks.autoencoder import Autoencoder
    from diffusion_tutorial.training.autoencoder import load_autoencoder, save_autoencoder

    path = save_autoencoder(tmp_path / "ae.safetensors", Autoencoder())
    with pytest.raises(ValueError, match=f"{path}.*autoencoder.*load_autoencoder"):
        pretrained.load_file(path)
    assert isinstance(load_autoencoder(path)[0], Autoencoder)


@pytest.mark.parametrize("kind", ["flow", "latent", "few-step", "banana"])
def test_a_kind_this_version_cannot_build_is_refused_clearly(tmp_path, tiny_model, kind):
    meta = {
        "kind": json.dumps(kind),
        "unet_config": json.dumps(dataclasses.asdict(tiny_model.config)),
        "schedule": json.dumps(SCHEDULE),
    }
    path = model_files._write(tmp_path / "m.safetensors", tiny_model, meta)
    with pytest.raises(ValueError, match=f"{path}.*kind '{kind}'.*cannot build.*unet"):
        pretrained.load_file(path)


def test_files_without_a_kind_key_are_read_as_before(tmp_path, tiny_model):
    # The shipped files (and every file written before kinds existed) carry no "kind".
    meta = {
        "unet_config": json.dumps(dataclasses.asdict(tiny_model.config)),
        "schedule": json.dumps(SCHEDULE),
    }
    path = model_files._write(tmp_path / "m.safetensors", tiny_model, meta)
    model, _ = pretrained.load_file(path)
    assert isinstance(model, UNet) and model.config == tiny_model.config
    for name in ("mnist", "mnist-cond"):
        assert "kind" not in pretrained.card(name)  # the shipped denoisers are unchanged


def _write_with_config(tmp_path, model, config) -> Path:
    meta = {"unet_config": json.dumps(config), "schedule": json.dumps(SCHEDULE)}
    return model_files._write(tmp_path / "m.safetensors", model, meta)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"new_option": 3}, "unet_config.*new_option"),  # TypeError: unexpected keyword
        ({"channel_mults": [1.5, 2]}, "channel_mults"),  # truncated to (1, 2) before
        ({"base_channels": 16}, "state_dict|parameter"),  # a bare load_state_dict RuntimeError
    ],
)
def test_load_errors_from_mismatched_metadata_name_the_file(tmp_path, tiny_model, change, match):
    config = {**dataclasses.asdict(tiny_model.config), **change}
    path = _write_with_config(tmp_path, tiny_model, config)
    with pytest.raises(ValueError, match=match) as info:
        pretrained.load_file(path)
    assert str(path) in str(info.value)


def test_a_string_config_names_the_file(tmp_path, tiny_model):
    meta = {"unet_config": json.dumps("tiny"), "schedule": json.dumps(SCHEDULE)}
    path = model_files._write(tmp_path / "m.safetensors", tiny_model, meta)
    with pytest.raises(ValueError, match=f"{path}.*unet_config.*JSON object"):
        pretrained.load_file(path)


@pytest.mark.parametrize(
    "content", [b"\xff" * 8 + b"{}", b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}    "]
)
def test_a_file_that_is_not_safetensors_names_its_path(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)  # e.g. "header too large" from the first 8 bytes
    for call in (pretrained.load_file, pretrained.card_file, pretrained.load_classifier):
        with pytest.raises(ValueError, match=f"{path}.*not a readable safetensors file"):
            call(path)


def test_load_file_accepts_an_upper_case_sha256(tmp_path, tiny_model):
    path = pretrained.save(tmp_path / "m.safetensors", tiny_model, schedule=SCHEDULE)
    digest = pretrained.sha256_file(path)
    pretrained.load_file(path, sha256=digest.upper())
    pretrained.load_classifier(
        pretrained.save_classifier(tmp_path / "c.safetensors", MNISTClassifier()),
        sha256=pretrained.sha256_file(tmp_path / "c.safetensors").upper(),
    )
    with pytest.raises(ValueError, match="sha256 must be 64 hexadecimal digits"):
        pretrained.load_file(path, sha256=digest[:10])


@pytest.mark.parametrize("device", [torch.float16, 3.5, "gpu0"])
def test_load_refuses_what_is_not_a_device(shipped, device):
    # Silently wrong before: a dtype passed as the device returned a float16 model.
    with pytest.raises((TypeError, ValueError), match="device"):
        pretrained.load("mnist", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_load_on_cuda_without_a_gpu_says_so(shipped):
    with pytest.raises(ValueError, match="device is 'cuda'.*no CUDA GPU.*'cpu'"):
        pretrained.load("mnist", device="cuda")


def test_save_refuses_a_network_its_config_does_not_rebuild(tmp_path, tiny_model):
    class Bigger(UNet):
        def __init__(self, config):
            super().__init__(config)
            self.extra = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match=r"differ from those of UNet\(model.config\)"):
        pretrained.save(tmp_path / "m.safetensors", Bigger(TINY), schedule=SCHEDULE)
    edited = UNet(TINY)
    edited.config = dataclasses.replace(TINY, base_channels=16)  # edited after construction
    with pytest.raises(ValueError, match="could not be loaded back"):
        pretrained.save(tmp_path / "m.safetensors", edited, schedule=SCHEDULE)
    assert list(tmp_path.iterdir()) == []


def test_load_kind_builds_the_files_network_and_names_the_loader_of_another_kind(tmp_path):
    """One loader for every kind: pretrained.load("mnist-autoencoder") and load_classifier go
    through model_files.load_kind; a file of another kind is refused with the function to use."""
    classifier = pretrained.save_classifier(tmp_path / "c.safetensors", MNISTClassifier())
    ae = model_files.load_kind(pretrained.verified_path("mnist-autoencoder"), "autoencoder")
    assert isinstance(ae, Autoencoder) and not ae.training
    shipped = pretrained.load("mnist-autoencoder")
    for a, b in zip(ae.state_dict().values(), shipped.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=f"{classifier}.*'classifier'.*load_classifier"):
        model_files.load_kind(classifier, "autoencoder")
    with pytest.raises(ValueError, match="'autoencoder'.*training.autoencoder.load_autoencoder"):
        pretrained.load_classifier(pretrained.verified_path("mnist-autoencoder"))
