"""Command line: train the MNIST evaluation classifier behind MNIST-FID and save it as safetensors.

``python -m diffusion_tutorial.training.classifier_cli --out mnist_classifier.safetensors``
(the shipped file was trained with the defaults on a CPU in a few minutes).
"""

from __future__ import annotations

import argparse
import time

import torch

from diffusion_tutorial import pretrained
from diffusion_tutorial.checks import check_float_in_range, check_positive_int
from diffusion_tutorial.data import mnist
from diffusion_tutorial.evaluation.classifier import accuracy, train_classifier
from diffusion_tutorial.files import check_writable

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """CLI: train the classifier on MNIST, report test accuracy and save it as safetensors."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="mnist_classifier.safetensors", help="output .safetensors")
    p.add_argument("--epochs", type=int, default=3, help="passes over the 60,000 training images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:  # refuse bad numbers and an unwritable --out before loading data or training
        check_positive_int("--epochs", args.epochs)
        check_positive_int("--batch-size", args.batch_size)
        check_float_in_range("--lr", args.lr, 0.0, None, low_open=True)
        check_writable(args.out, "--out")
    except (TypeError, ValueError) as err:
        p.error(str(err))
    train, test = mnist(train=True), mnist(train=False)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    clf = train_classifier(
        train.images,
        train.labels,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        generator=gen,
    )
    seconds = time.perf_counter() - start
    acc = accuracy(clf, test.images, test.labels)
    command = (
        "python -m diffusion_tutorial.training.classifier_cli "
        f"--epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr} --seed {args.seed}"
    )
    path = pretrained.save_classifier(
        args.out,
        clf,
        test_accuracy=acc,
        train_seconds=round(seconds, 1),
        train_command=command,
        hardware=f"CPU, {torch.get_num_threads()} threads",
        torch_version=torch.__version__,
    )
    print(f"test accuracy {acc:.4f}, trained in {seconds:.0f} s, saved {path}")
    print(f"sha256 {pretrained.sha256_file(path)}")


if __name__ == "__main__":
    main()
