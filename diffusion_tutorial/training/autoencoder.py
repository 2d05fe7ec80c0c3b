"""Train the MNIST autoencoder of latent diffusion, save it as safetensors and measure its floor.

``python -m diffusion_tutorial.training.autoencoder --out _build/autoencoder --steps 3000``
(``--minutes`` stops earlier on a wall-clock budget). Loss per image: the squared error summed
over the 784 pixels + ``kl_weight`` * KL(q(z | x) || N(0, I)) summed over the latent, averaged
over the batch (``networks.autoencoder``'s docstring says why the KL term is there). Adam, a
seeded generator for batches and the reparameterisation noise.

The file is written with :mod:`diffusion_tutorial.model_files`' writer (``"kind": "autoencoder"``,
the config as JSON under ``"autoencoder_config"``, the model card as JSON entries) and read back by
:func:`load_autoencoder`; ``pretrained.load_file`` (denoisers only) refuses it by naming that
function. The shipped file, ``pretrained.load("mnist-autoencoder")``, is this run's output with
``config.scaling_factor`` measured afterwards (``networks.latent.measure_scaling_factor``).

Book: Latent diffusion (Part 4). Rombach et al. 2022, Sec. 3.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from diffusion_tutorial.checks import check_float_in_range, check_positive_int
from diffusion_tutorial.data import mnist
from diffusion_tutorial.model_files import _encode, _kind_meta, _write, card_file, load_kind
from diffusion_tutorial.networks.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    kl_to_standard_normal,
    sample_latent,
)
from diffusion_tutorial.runtime import tqdm

__all__ = ["autoencoder_loss", "train", "save_autoencoder", "load_autoencoder", "evaluate", "main"]

FILENAME = "autoencoder.safetensors"


def autoencoder_loss(
    model: Autoencoder, x: torch.Tensor, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, rec, kl): rec = mean over the batch of sum((decode(z) - x)**2), z ~ q(z | x); loss = rec + beta * kl."""
    mean, logvar = model.encode(x)  # each (B, L, h, w)
    beta = model.config.kl_weight
    z = sample_latent(mean, logvar, generator=generator) if beta > 0 else mean
    rec = (model.decode(z) - x).square().flatten(1).sum(dim=1).mean()
    kl = kl_to_standard_normal(mean, logvar).mean()
    return rec + beta * kl, rec, kl


def train(
    model: Autoencoder,
    images: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    minutes: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Adam on :func:`autoencoder_loss` for ``steps`` steps (or until ``minutes`` pass); returns the log."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    start, done, rec_avg = time.perf_counter(), 0, float("nan")
    bar = tqdm(range(steps), disable=not progress, desc="autoencoder")
    for step in bar:
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        loss, rec, kl = autoencoder_loss(model, images[idx], generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        mse = rec.item() / images[0].numel()  # per pixel
        rec_avg = mse if step == 0 else 0.98 * rec_avg + 0.02 * mse  # the last ~50 steps
        bar.set_postfix(mse=f"{rec_avg:.4f}", kl=f"{kl.item():.0f}")
        if minutes is not None and time.perf_counter() - start > 60 * minutes:
            break
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    return {"steps": done, "seconds": seconds, "s_per_step": seconds / done, "train_mse": rec_avg}


def save_autoencoder(path: str | os.PathLike, model: Autoencoder, **card: Any) -> Path:
    """Write ``model`` as safetensors with ``"kind": "autoencoder"``, its config and the model card."""
    meta = _kind_meta("autoencoder", model)  # kind and config, checked like every other kind
    meta.update(_encode(card))
    return _write(path, model, meta)


def load_autoencoder(path: str | os.PathLike) -> tuple[Autoencoder, dict[str, Any]]:
    """The :class:`~diffusion_tutorial.networks.autoencoder.Autoencoder` a :func:`save_autoencoder` file holds (eval mode) and its metadata."""
    return load_kind(path, "autoencoder"), card_file(path)


@torch.no_grad()
def evaluate(model: Autoencoder, *, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Test reconstruction MSE (per pixel, all 10,000), latent std, and MNIST-FID of decoded test
    encodings vs test digits beside the real-vs-real floor (train vs test) at the same ``n``."""
    from diffusion_tutorial import pretrained
    from diffusion_tutorial.evaluation.classifier import classifier_features
    from diffusion_tutorial.evaluation.metrics import frechet_distance, mnist_subset

    test = mnist(train=False).images  # (10000, 1, 28, 28)
    means = torch.cat([model.encode(b)[0] for b in test.split(500)])  # (10000, L, h, w)
    decoded = torch.cat([model.decode(z) for z in means.split(500)])
    out = {
        "test_mse": (decoded - test).square().mean().item(),
        "latent_std": means.std().item(),
        "latent_mean": means.mean().item(),
    }
    gen = torch.Generator().manual_seed(seed)
    reference, _ = mnist_subset(n, train=False, generator=gen)  # as bench/mnist_sweep.py
    real_train, _ = mnist_subset(n, train=True, generator=gen)
    clf = pretrained.load_classifier()
    ref = classifier_features(clf, reference)  # (n, hidden)
    # Decode the encodings of n OTHER test digits than the reference, so the FID is a floor of
    # the autoencoder at n and not a reconstruction check of the very same images.
    other = torch.randperm(len(test), generator=gen)[:n]
    recon = model.decode(model.encode(test[other])[0])
    out["fid_decoded"] = frechet_distance(classifier_features(clf, recon), ref)
    out["fid_floor"] = frechet_distance(classifier_features(clf, real_train), ref)
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: train, save ``<out>/autoencoder.safetensors``, print the test MSE, latent std and FID."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="_build/autoencoder", help="output folder")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--minutes", type=float, default=None, help="stop after this wall time")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=AutoencoderConfig.kl_weight)
    p.add_argument("--base-channels", type=int, default=AutoencoderConfig.base_channels)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=1000, help="images per side of the MNIST-FID")
    args = p.parse_args(argv)
    try:
        for name in ("steps", "batch_size", "n"):
            check_positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
        check_float_in_range("--lr", args.lr, 0.0, None, low_open=True)
        if args.minutes is not None:
            check_float_in_range("--minutes", args.minutes, 0.0, None, low_open=True)
        cfg = AutoencoderConfig(base_channels=args.base_channels, kl_weight=args.kl_weight)
    except (TypeError, ValueError) as err:
        p.error(str(err))
    torch.manual_seed(args.seed)  # the initial weights
    model = Autoencoder(cfg)
    print(f"{model.num_parameters():,} parameters, latent {cfg.latent_shape}")
    gen = torch.Generator().manual_seed(args.seed)
    log = train(
        model, mnist(train=True).images, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, minutes=args.minutes, generator=gen,
    )  # fmt: skip
    metrics = evaluate(model, n=args.n, seed=args.seed)
    command = (
        f"python -m diffusion_tutorial.training.autoencoder --steps {log['steps']} "
        f"--batch-size {args.batch_size} --lr {args.lr} --kl-weight {args.kl_weight} "
        f"--base-channels {args.base_channels} --seed {args.seed}"
    )
    path = save_autoencoder(
        Path(args.out) / FILENAME, model, train_command=command,
        hardware=f"CPU, {torch.get_num_threads()} threads", torch_version=torch.__version__,
        num_parameters=model.num_parameters(), **log, **metrics,
    )  # fmt: skip
    print(json.dumps({**log, **metrics}, indent=1))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
