"""Regenerate every committed result the book's ledger reads: one command, resumable.

The ledger (``notebooks/reference/ledger.ipynb``) reads only committed benchmark files in
``diffusion_tutorial/results/``; each was written by ``bench/mnist_sweep.py`` with the commands
below (the same as in that script's docstring, which says what each sampler string means).
``bench/mnist_sweep.py`` skips every (draw, sampler, n) already in its ``--out`` file, so running
this script with the files in place does nothing; delete a file (or lines of it) to measure it
again. ``--dry-run`` prints the commands instead of running them.

    .venv/bin/python bench/ledger.py --dry-run               # print every command
    .venv/bin/python bench/ledger.py --only cond_mnist_n1000  # regenerate one file
    .venv/bin/python bench/ledger.py --jobs 3                 # draws in parallel processes

Each command runs with ``OMP_NUM_THREADS=1`` and ``--threads 1``, as the committed files were
measured (their ``seconds`` are one core's). Cost on one free CPU core, roughly: DDPM-1000 in
``mnist_sweep.jsonl`` ~20 min per draw (n = 250); a 20-NFE sampler at n = 1,000 ~1-2 min per
draw; all files together several hours. ``--jobs J`` runs J draws at a time (one process each);
the commands of one (file, draw) run in order within one process slot.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "diffusion_tutorial/results"


@dataclass(frozen=True)
class Run:
    """One ``bench/mnist_sweep.py`` invocation: a draw, its samplers and the file it appends to."""

    out: str  # file stem in diffusion_tutorial/results/
    seed: int
    samplers: str  # comma-separated sampler strings of bench/mnist_sweep.py
    n: int = 1000
    extra: tuple[str, ...] = ("--batch", "250")

    def argv(self, python: str) -> list[str]:
        args = [python, "bench/mnist_sweep.py", "--seed", str(self.seed), "--n", str(self.n)]
        args += [*self.extra, "--threads", "1", "--out", f"{RESULTS}/{self.out}.jsonl"]
        return [*args, "--samplers", self.samplers]


def runs() -> list[Run]:
    """Every invocation behind the ledger's files, in the order of bench/mnist_sweep.py's docstring."""
    out: list[Run] = []
    # Parts 2-3: the first run, n = 250 with DDPM-1000 and 64 stored samples per run: the
    # samplers of mnist_sweep.py's DEFAULT that the committed file holds (DEFAULT also has the
    # 100-step settings, never committed).
    first = (
        "sde:20,dpm:20,ddim:50:0,ddim:50:1,ddpm,ddim:10:0,ddim:10:1,sde:10,dpm:10,ddim:20:0,"
        "ddim:20:1,hat:10,hat:20,ddim:10:0.5,ddim:20:0.5,sde:5,dpm:5,ddim:5:0,ddim:5:1,hat:50,"
        "ddim:50:0.5,sde:50,dpm:50,sde:15,dpm:15,ddim:15:0,ddim:15:1"
    )
    out += [Run("mnist_sweep", s, first, n=250, extra=("--keep", "64")) for s in (0, 1, 2)]
    # Part 3 ch. 3: the pixel model at n = 1,000 (five draws at 19-20 NFE, three elsewhere).
    pixel = "mnist_sweep_n1000"
    out += [Run(pixel, s, "sde:20,dpm:20,ddim:20:0,ddim:20:1,heun:10,euler:20") for s in range(5)]
    out += [Run(pixel, s, "ddim:10:0,dpm:10,sde:10,heun:5,ddim:5:0,dpm:5") for s in (0, 1, 2)]
    out += [Run(pixel, s, "ddim:1:0,ddim:2:0,ddim:4:0,dpm:1,dpm:2,dpm:4,heun:3") for s in (0, 1, 2)]
    # Flow matching (mnist-flow; and the pixel model's 50-NFE rows beside it).
    flow = (
        "flow-euler:5,flow-heun:3,flow-euler:10,flow-heun:5,flow-euler:20,flow-heun:10,"
        "flow-euler:50,flow-heun:25,ddim:50:0,dpm:50"
    )
    out += [Run("flow_mnist_n1000", s, flow) for s in (0, 1, 2)]
    # Latent diffusion (mnist-latent decoded; the autoencoder's floor).
    latent = (
        "ae-floor,latent-dpm:10,latent-dpm:20,latent-sde:20,latent-ddim:20:0,latent-cond-dpm:20"
    )
    out += [Run("latent_mnist_n1000", s, latent) for s in (0, 1, 2)]
    # The conditional pixel model at s = 1 (the ledger's row of mnist-cond).
    out += [Run("cond_mnist_n1000", s, "cond-dpm:20") for s in (0, 1, 2)]
    # The few-step model (Part 4, One to four steps), beside mnist-flow's Euler at the same NFE.
    few = "few-step:1,few-step:2,few-step:4,flow-euler:1,flow-euler:2,flow-euler:4"
    out += [Run("few_step_mnist_n1000", s, few) for s in (0, 1, 2)]
    return out


def shell_line(run: Run, python: str) -> str:
    return "OMP_NUM_THREADS=1 " + shlex.join(run.argv(python))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument(
        "--only", action="append", default=None, metavar="STEM",
        help="only this results file (stem, e.g. flow_mnist_n1000); repeatable",
    )  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, help="draws run at a time (default 1)")
    p.add_argument("--python", default=".venv/bin/python", help="the interpreter to run with")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    todo = runs()
    stems = sorted({r.out for r in todo})
    if args.only:
        unknown = sorted(set(args.only) - set(stems))
        if unknown:
            p.error(f"--only: unknown file(s) {unknown}; the ledger's files are {stems}")
        todo = [r for r in todo if r.out in args.only]
    if args.dry_run:
        print(f"cd {shlex.quote(str(ROOT))}")
        for r in todo:
            print(shell_line(r, args.python))
        return 0

    # Commands of one (file, draw) run in order in one slot; different draws may run in parallel.
    groups: dict[tuple[str, int], list[Run]] = {}
    for r in todo:
        groups.setdefault((r.out, r.seed), []).append(r)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run_group(group: list[Run]) -> int:
        for r in group:
            print(shell_line(r, args.python), file=sys.stderr, flush=True)
            rc = subprocess.run(r.argv(args.python), cwd=ROOT, env=env).returncode
            if rc:
                print(f"FAILED ({rc}): {shell_line(r, args.python)}", file=sys.stderr)
                return rc
        return 0

    with ThreadPoolExecutor(args.jobs) as pool:
        codes = list(pool.map(run_group, groups.values()))
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
