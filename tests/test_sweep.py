"""The committed sampler benchmark (package data) loads, is consistent, and its x_T is reproducible."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_tutorial.evaluation import sweep

KEYS = {"seed", "n", "sampler", "label", "nfe", "fid", "kid", "floor_fid", "floor_kid", "seconds"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return sweep.sweep_results()


def test_rows_have_every_field_and_one_line_per_run(rows):
    assert rows, "the committed benchmark is empty"
    for r in rows:
        assert KEYS <= r.keys(), r
        assert r["fid"] >= 0 and r["seconds"] > 0 and r["nfe"] >= 1
    runs = [(r["seed"], r["n"], r["sampler"]) for r in rows]
    assert len(runs) == len(set(runs)), "a run appears twice"


def test_the_floor_is_one_number_per_draw(rows):
    # Every sampler of a draw is compared with the same reference and the same floor.
    for seed in {r["seed"] for r in rows}:
        floors = {(r["n"], r["floor_fid"], r["floor_kid"]) for r in rows if r["seed"] == seed}
        assert len({n for n, _, _ in floors}) == len(floors), floors


def test_sweep_fids_and_errors(rows):
    sampler = rows[0]["sampler"]
    fids = sweep.sweep_fids(rows, sampler)
    assert fids and all(isinstance(v, float) for v in fids.values())
    with pytest.raises(KeyError, match="not in the results"):
        sweep.sweep_fids(rows, "no-such-sampler")
    assert sweep.mean_sd([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
    assert sweep.mean_sd([5.0]) == (5.0, 0.0)


def test_stored_samples_are_images_from_the_runs(rows):
    samples = sweep.sweep_samples(0)
    assert set(samples) <= {r["sampler"] for r in rows if r["seed"] == 0}
    for x in samples.values():
        assert x.shape[1:] == (1, 28, 28) and x.min() >= -1 and x.max() <= 1


def test_x_T_is_the_benchmarks_draw():
    # bench/mnist_sweep.py draws x_T = randn((n, 1, 28, 28)) from Generator().manual_seed(seed).
    x = sweep.sweep_x_T(1, n=8)
    torch.testing.assert_close(
        x, torch.randn((8, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    )
    assert not torch.equal(x, sweep.sweep_x_T(2, n=8))


# ------------------------------------------------------- reliability II (issue 23): readers
ROW = {"seed": 0, "n": 8, "sampler": "ddpm", "fid": 1.0, "kid": 0.1}


def _write_rows(path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_a_truncated_last_line_is_skipped_with_a_warning_naming_file_and_line(tmp_path):
    # One truncated line (a run killed mid-write) made the whole file unreadable before.
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "seed": 1})[:20])
    with pytest.warns(UserWarning, match=f"{path}.*line 2.*truncated"):
        rows = sweep.sweep_results(path)
    assert rows == [ROW]


def test_a_damaged_line_inside_the_file_names_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    _write_rows(path, [json.dumps(ROW), '{"seed": 1, "sampl', json.dumps({**ROW, "seed": 2})])
    with pytest.raises(ValueError, match=f"{path}, line 2: not valid JSON"):
        sweep.sweep_results(path)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"n": 8, "sampler": "ddpm", "fid": 1.0}, "line 1.*'seed'"),  # a KeyError later before
        ({"seed": "0", "sampler": "ddpm"}, "line 1.*'seed' must be an int"),
        ({"seed": 0, "sampler": 3}, "line 1.*'sampler' must be a string"),
    ],
)
def test_a_row_missing_seed_or_sampler_names_file_and_line(tmp_path, row, match):
    path = tmp_path / "r.jsonl"
    _write_rows(path, [json.dumps(row)])
    with pytest.raises(ValueError, match=match):
        sweep.sweep_results(path)


def test_a_duplicate_seed_and_sampler_row_is_refused(tmp_path):
    # Silently wrong before: the later row won in sweep_fids.
    path = tmp_path / "r.jsonl"
    _write_rows(path, [json.dumps(ROW), json.dumps({**ROW, "fid": 9.0})])
    with pytest.raises(ValueError, match=f"{path}, line 2.*seed 0.*'ddpm'.*line 1"):
        sweep.sweep_results(path)
    with pytest.raises(ValueError, match="seed 0.*'ddpm'.*twice"):
        sweep.sweep_fids([ROW, {**ROW, "fid": 9.0}], "ddpm")


def test_sweep_fids_names_a_missing_key():
    with pytest.raises(KeyError, match="'floor_fid'.*seed 0.*'ddpm'"):
        sweep.sweep_fids([ROW], "ddpm", key="floor_fid")


@pytest.mark.parametrize("values", [[1.0, math.nan], [math.inf], [], ["1.0", 2.0]])
def test_mean_sd_refuses_what_is_not_finite_numbers(values):
    # A NaN fid gave (nan, nan) before; an empty list gave statistics' own error.
    with pytest.raises((ValueError, TypeError), match="values"):
        sweep.mean_sd(values)


def _write_npz(folder, **arrays):
    path = folder / "mnist_sweep_samples_seed0.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.random.default_rng(0).random((2, 28, 28)), "uint8.*float64"),  # rescaled before
        (np.zeros((28,), dtype=np.uint8), r"\(K, 28, 28\).*\(28,\)"),  # 1-D accepted before
        (np.zeros((2, 1, 28, 28), dtype=np.uint8), r"\(K, 28, 28\)"),
    ],
)
def test_sweep_samples_refuses_arrays_that_are_not_uint8_images(tmp_path, array, match):
    path = _write_npz(tmp_path, ddpm=array)
    with pytest.raises(ValueError, match=f"{path}.*'ddpm'.*{match}"):
        sweep.sweep_samples(0, tmp_path)


def test_a_truncated_npz_names_its_path(tmp_path):
    path = _write_npz(tmp_path, ddpm=np.zeros((2, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{path}.*damaged or truncated"):
        sweep.sweep_samples(0, tmp_path)


def test_uint8_samples_still_map_to_minus_one_one(tmp_path):
    _write_npz(tmp_path, ddpm=np.array([[[0] * 28] * 27 + [[255] * 28]], dtype=np.uint8))
    x = sweep.sweep_samples(0, tmp_path)["ddpm"]
    assert x.shape == (1, 1, 28, 28) and x.min() == -1 and x.max() == 1


def test_paired_difference_pairs_by_draw_with_the_sample_sd():
    # D = a - b on draws 0, 1, 2 = (2, 3, 6): mean 11/3, s_D^2 = sum (D - 11/3)^2 / (3 - 1) = 13/3.
    # b lists its draws in another order and has a draw a lacks: pairing by position, the
    # population sd (/ K) or SE = s_D / K instead of s_D / sqrt(K) each give another number.
    a = {0: 3.0, 1: 5.0, 2: 10.0}
    b = {2: 4.0, 0: 1.0, 7: 100.0, 1: 2.0}
    got = sweep.paired_difference(a, b)
    assert got.draws == (0, 1, 2)
    assert got.mean == pytest.approx(11 / 3, rel=1e-12)  # exact arithmetic up to round-off
    assert got.se == pytest.approx(math.sqrt(13 / 3) / math.sqrt(3), rel=1e-12)


def test_paired_difference_of_one_draw_has_no_se_and_of_none_is_an_error():
    one = sweep.paired_difference({4: 2.0}, {4: 1.5, 5: 0.0})
    assert one.mean == 0.5 and one.draws == (4,) and math.isnan(one.se)
    with pytest.raises(ValueError, match="share no draw"):
        sweep.paired_difference({0: 1.0}, {1: 1.0})


def test_resolved_uses_the_t_quantile_of_the_draws():
    # mean / SE = 4.0 with 3 draws: inside t_{0.975, 2} = 4.303 (not resolved), though outside
    # the normal 1.96 and t_{0.975, 4} = 2.776 that a wrong quantile or dof would use.
    d = sweep.PairedDifference(mean=4.0, se=1.0, draws=(0, 1, 2))
    assert not d.resolved
    assert d._replace(mean=-4.4).resolved  # the sign does not matter
    assert sweep.PairedDifference(4.0, 1.0, (0, 1, 2, 3, 4)).resolved  # 5 draws: 2.776
    assert not sweep.PairedDifference(100.0, math.nan, (0,)).resolved  # one draw: no SE


def test_committed_n1000_files_share_the_floor_of_each_draw():
    # The ledger pairs rows of different files by draw: every file at n = 1,000 must have
    # scored its draw k against the same reference and floor (bench/quality.mnist_draw).
    floors: dict[int, set] = {}
    for path in sorted(sweep.RESULTS_DIR.glob("*_n1000.jsonl")):
        for r in sweep.sweep_results(path):
            assert r["n"] == 1000, (path.name, r["sampler"])
            floors.setdefault(r["seed"], set()).add(round(r["floor_fid"], 6))
    assert floors, "no committed n = 1,000 results"
    assert all(len(f) == 1 for f in floors.values()), floors


def test_bench_ledger_reruns_exactly_the_committed_rows(monkeypatch):
    # bench/ledger.py says its commands regenerate every row of the files the ledger reads, and
    # nothing else: a sampler dropped from a command, or a committed row no command makes, breaks
    # the claim (mnist_sweep.py skips rows already present, so a rerun would not notice).
    path = Path(__file__).resolve().parent.parent / "bench" / "ledger.py"
    spec = importlib.util.spec_from_file_location("bench_ledger", path)
    ledger = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, ledger)  # its dataclass looks itself up there
    spec.loader.exec_module(ledger)
    planned = {
        (run.out, run.seed, sampler, run.n)
        for run in ledger.runs()
        for sampler in run.samplers.split(",")
    }
    committed = {
        (stem, r["seed"], r["sampler"], r["n"])
        for stem in {run.out for run in ledger.runs()}
        for r in sweep.sweep_results(sweep.RESULTS_DIR / f"{stem}.jsonl")
    }
    assert planned - committed == set(), "commands whose rows are not committed"
    assert committed - planned == set(), "committed rows that no command makes"
