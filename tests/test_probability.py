"""Tests for diffusion_tutorial.background.probability: identities and oracles, not golden numbers."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_tutorial.background import probability as pr
from diffusion_tutorial.background.selfcheck import check_close, check_estimate

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize("mu,std", [(0.0, 1.0), (3.0, 0.5), (-2.0, 4.0)])
def test_mc_mean_within_five_std_errors_of_truth(mu: float, std: float) -> None:
    # The estimate is approximately normal around mu with std = std_error; 5 standard errors
    # fail with probability ~6e-7, so the test is not flaky for a fixed seed or any other.
    x = mu + std * torch.randn(20_000, generator=gen(), dtype=D)
    est = pr.mc_mean(x)
    assert abs(est.estimate - mu) < 5 * est.std_error
    # The standard error is sigma / sqrt(n); the sample std is within 3% of sigma at n = 20000.
    assert est.std_error == pytest.approx(std / math.sqrt(20_000), rel=0.03)


def test_mc_mean_std_error_matches_spread_of_repeated_estimates() -> None:
    # 400 independent estimates of n = 200 each: their empirical std is the true std error
    # (1/sqrt(200)); its relative sampling error is ~1/sqrt(2 * 400) = 3.5%, so 12% is ~3.5 sigma.
    x = torch.randn(400, 200, generator=gen(1), dtype=D)
    est = pr.mc_mean(x, dim=1)
    assert est.estimate.std() == pytest.approx(1 / math.sqrt(200), rel=0.12)
    assert est.std_error.mean() == pytest.approx(1 / math.sqrt(200), rel=0.02)


@pytest.mark.parametrize("std", [0.5, 2.0])
def test_mc_variance_of_gaussian(std: float) -> None:
    # N(0, std^2) has variance std^2 (a variance, not a std) and Var[s^2] = 2 std^4 / (n - 1).
    n = 50_000
    x = std * torch.randn(n, generator=gen(2), dtype=D)
    est = pr.mc_variance(x)
    assert abs(est.estimate - std**2) < 5 * est.std_error
    assert est.std_error == pytest.approx(math.sqrt(2 / (n - 1)) * std**2, rel=0.05)


def test_mc_variance_is_unbiased_sample_variance() -> None:
    x = torch.randn(7, 3, generator=gen(3), dtype=D)
    torch.testing.assert_close(pr.mc_variance(x).estimate, x.var(0, correction=1))


def test_mc_expectation_lotus_uniform_square() -> None:
    # E[U^2] = 1/3 for U ~ Uniform(0, 1) (law of the unconscious statistician).
    est = pr.mc_expectation(
        lambda u: u**2, lambda n, g: torch.rand(n, generator=g, dtype=D), 50_000, gen(4)
    )
    assert abs(est.estimate - 1 / 3) < 5 * est.std_error


def test_interval_is_symmetric() -> None:
    est = pr.MonteCarloEstimate(torch.tensor(1.0), torch.tensor(0.5))
    lo, hi = est.interval(2.0)
    assert (lo.item(), hi.item()) == (0.0, 2.0)


@pytest.mark.parametrize(
    "values,err",
    [
        (torch.tensor([1.0]), ValueError),  # one sample has no standard error
        (torch.tensor(1.0), ValueError),  # no sample dimension
        (torch.tensor([1, 2, 3]), TypeError),  # integers
        ([1.0, 2.0], TypeError),  # not a tensor
    ],
)
def test_mc_mean_bad_input(values: object, err: type[Exception]) -> None:
    with pytest.raises(err, match="values"):
        pr.mc_mean(values)  # type: ignore[arg-type]


def test_mc_bad_dim_and_n() -> None:
    with pytest.raises(ValueError, match="dim"):
        pr.mc_mean(torch.zeros(3, 4), dim=2)
    with pytest.raises(ValueError, match="values"):
        pr.mc_variance(torch.zeros(3))  # fewer than 4 samples
    with pytest.raises(ValueError, match="n"):
        pr.mc_expectation(lambda x: x, lambda n, g: torch.zeros(n), 0)


# ------------------------------------------------------------------- Gaussians


@pytest.mark.parametrize("mu,std", [(0.0, 1.0), (2.0, 0.1), (-1.0, 3.0)])
def test_sample_gaussian_moments(mu: float, std: float) -> None:
    # mean + std * randn has mean mu and VARIANCE std^2; tolerances are 5 standard errors.
    z = pr.sample_gaussian(torch.tensor(mu, dtype=D), torch.tensor(std, dtype=D), (40_000,), gen(5))
    m = pr.mc_mean(z)
    v = pr.mc_variance(z)
    assert abs(m.estimate - mu) < 5 * m.std_error
    assert abs(v.estimate - std**2) < 5 * v.std_error


def test_sample_gaussian_shape_dtype_and_gradient() -> None:
    mu = torch.zeros(3, 2, dtype=D, requires_grad=True)
    std = torch.ones(2, dtype=D, requires_grad=True)
    z = pr.sample_gaussian(mu, std, (5,), gen(6))
    assert z.shape == (5, 3, 2) and z.dtype == D
    # dz/dmu = 1 for every draw (the pathwise gradient).
    z.sum().backward()
    assert torch.all(mu.grad == 5)


def test_sample_gaussian_is_reproducible_with_generator() -> None:
    a = pr.sample_gaussian(torch.zeros(4), torch.ones(4), (), gen(7))
    b = pr.sample_gaussian(torch.zeros(4), torch.ones(4), (), gen(7))
    assert torch.equal(a, b)


def test_reparameterize_uses_std_from_logvar() -> None:
    mu, logvar = torch.zeros(3, dtype=D), torch.log(torch.tensor([0.25, 1.0, 4.0], dtype=D))
    z = pr.reparameterize(mu, logvar, (), gen(8))
    ref = pr.sample_gaussian(mu, torch.tensor([0.5, 1.0, 2.0], dtype=D), (), gen(8))
    torch.testing.assert_close(z, ref)


@pytest.mark.parametrize("mu,var", [(0.0, 1.0), (1.5, 0.3), (-2.0, 5.0)])
def test_gaussian_log_prob_matches_torch(mu: float, var: float) -> None:
    x = torch.linspace(-4, 4, 9, dtype=D)
    ref = torch.distributions.Normal(mu, math.sqrt(var)).log_prob(x)
    out = pr.gaussian_log_prob(x, torch.tensor(mu, dtype=D), torch.tensor(var, dtype=D))
    torch.testing.assert_close(out, ref)  # float64 defaults: rtol 1e-7


def test_gaussian_density_integrates_to_one() -> None:
    # Trapezoid rule on [-12, 12] with 20001 points: error far below 1e-8.
    x = torch.linspace(-12, 12, 20_001, dtype=D)
    p = pr.gaussian_log_prob(x, torch.tensor(0.5, dtype=D), torch.tensor(2.0, dtype=D)).exp()
    assert torch.trapezoid(p, x).item() == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize(
    "fn,kwargs,name",
    [
        (pr.sample_gaussian, {"mu": torch.zeros(2), "std": torch.tensor([1.0, -1.0])}, "std"),
        (pr.sample_gaussian, {"mu": torch.zeros(2), "std": torch.zeros(2)}, "std"),
        (
            pr.gaussian_log_prob,
            {"x": torch.zeros(2), "mu": torch.zeros(2), "var": -torch.ones(2)},
            "var",
        ),
    ],
)
def test_gaussians_reject_nonpositive_scale(fn, kwargs, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        fn(**kwargs)


def test_sample_gaussian_rejects_integer_mean() -> None:
    with pytest.raises(TypeError, match="mu"):
        pr.sample_gaussian(torch.zeros(2, dtype=torch.long), torch.ones(2))


# --------------------------------------------------------------------------- KL


def _rand_gauss(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, ...]:
    g = gen(seed)
    mu_q, mu_p = torch.randn(shape, generator=g, dtype=D), torch.randn(shape, generator=g, dtype=D)
    var_q = torch.rand(shape, generator=g, dtype=D) * 2 + 0.2
    var_p = torch.rand(shape, generator=g, dtype=D) * 2 + 0.2
    return mu_q, var_q, mu_p, var_p


@pytest.mark.parametrize("shape", [(5,), (3, 4)])
def test_kl_gaussian_matches_torch_distributions(shape: tuple[int, ...]) -> None:
    mu_q, var_q, mu_p, var_p = _rand_gauss(shape, 9)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu_q, var_q.sqrt()),
        torch.distributions.Normal(mu_p, var_p.sqrt()),
    )
    torch.testing.assert_close(pr.kl_gaussian(mu_q, var_q, mu_p, var_p), ref)


def test_kl_diag_matches_torch_independent() -> None:
    mu_q, var_q, mu_p, var_p = _rand_gauss((6, 3), 10)
    Normal, Ind = torch.distributions.Normal, torch.distributions.Independent
    ref = torch.distributions.kl_divergence(
        Ind(Normal(mu_q, var_q.sqrt()), 1), Ind(Normal(mu_p, var_p.sqrt()), 1)
    )
    torch.testing.assert_close(pr.kl_diag_gaussian(mu_q, var_q, mu_p, var_p), ref)
    # event_dims=2 sums everything; event_dims=0 is elementwise.
    torch.testing.assert_close(pr.kl_diag_gaussian(mu_q, var_q, mu_p, var_p, 2), ref.sum())
    torch.testing.assert_close(
        pr.kl_diag_gaussian(mu_q, var_q, mu_p, var_p, 0), pr.kl_gaussian(mu_q, var_q, mu_p, var_p)
    )


def test_kl_gaussian_closed_form_vs_monte_carlo() -> None:
    mu_q, var_q, mu_p, var_p = _rand_gauss((4,), 11)
    exact = pr.kl_gaussian(mu_q, var_q, mu_p, var_p)
    est = pr.kl_gaussian_monte_carlo(mu_q, var_q, mu_p, var_p, 100_000, gen(12))
    # 5 standard errors: the MC estimate is unbiased, so a miss has probability ~6e-7.
    assert torch.all((est.estimate - exact).abs() < 5 * est.std_error)


def test_kl_is_zero_iff_equal_and_asymmetric() -> None:
    mu, var = torch.tensor([0.3], dtype=D), torch.tensor([1.7], dtype=D)
    assert pr.kl_gaussian(mu, var, mu, var).item() == 0.0
    mu_q, var_q, mu_p, var_p = _rand_gauss((100,), 13)
    assert torch.all(pr.kl_gaussian(mu_q, var_q, mu_p, var_p) > 0)  # Gibbs' inequality
    kl_qp = pr.kl_gaussian(mu_q, var_q, mu_p, var_p)
    kl_pq = pr.kl_gaussian(mu_p, var_p, mu_q, var_q)
    assert not torch.allclose(kl_qp, kl_pq)


def test_kl_equal_variances_is_scaled_squared_distance() -> None:
    # KL(N(a, s2) || N(b, s2)) = (a - b)^2 / (2 s2): the form every diffusion loss term takes.
    a, b, s2 = torch.tensor(1.2, dtype=D), torch.tensor(-0.4, dtype=D), torch.tensor(0.3, dtype=D)
    torch.testing.assert_close(pr.kl_gaussian(a, s2, b, s2), (a - b) ** 2 / (2 * s2))


@pytest.mark.parametrize(
    "fn,args",
    [
        (pr.gaussian_log_prob, (torch.zeros(3), torch.zeros(4), torch.ones(3))),
        (pr.sample_gaussian, (torch.zeros(3), torch.ones(2))),
        (pr.kl_gaussian, (torch.zeros(3), torch.ones(3), torch.zeros(2), torch.ones(2))),
    ],
)
def test_mismatched_shapes_raise_value_error(fn, args) -> None:
    with pytest.raises(ValueError, match="do not broadcast"):
        fn(*args)


def test_kl_bad_inputs() -> None:
    z = torch.zeros(3)
    with pytest.raises(ValueError, match="var_q"):
        pr.kl_gaussian(z, -torch.ones(3), z, torch.ones(3))
    with pytest.raises(ValueError, match="var_p"):
        pr.kl_gaussian(z, torch.ones(3), z, torch.zeros(3))
    with pytest.raises(ValueError, match="event_dims"):
        pr.kl_diag_gaussian(z, torch.ones(3), z, torch.ones(3), event_dims=2)
    with pytest.raises(ValueError, match="same shape"):
        pr.kl_monte_carlo(torch.zeros(5), torch.zeros(4))
    with pytest.raises(ValueError, match="n"):
        pr.kl_gaussian_monte_carlo(z, torch.ones(3), z, torch.ones(3), 0)


# -------------------------------------------------------------------------- ELBO


def test_elbo_equals_log_evidence_at_exact_posterior() -> None:
    # 1-D model z ~ N(0, 1), x | z ~ N(z, s2): p(x) = N(0, 1 + s2) and p(z | x) is Gaussian.
    # With q = p(z | x) the gap KL(q || p(z | x)) is zero, so ELBO = log p(x).
    s2 = 0.5
    x = torch.tensor([[0.7], [-1.3]], dtype=D)  # (B, 1)
    post_var = torch.full((2, 1), 1 / (1 + 1 / s2), dtype=D)
    post_mu = post_var * x / s2

    def log_lik(x_: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return pr.gaussian_log_prob(x_, z, torch.full_like(z, s2)).sum(-1)  # (S, B)

    # With the closed-form KL the identity holds in expectation: E_q[log p(x | z)] is averaged
    # over n draws. (x - z) ~ N(x - m, v) under q, so Var[log p(x | z)] = (2 v^2 + 4 (x - m)^2 v)
    # / (4 s2^2) exactly; allow 5 standard errors (miss probability ~6e-7).
    n = 20_000
    elbo = pr.elbo_gaussian_encoder(x, post_mu, post_var.log(), log_lik, n, gen(14))
    log_px = pr.gaussian_log_prob(x, torch.zeros_like(x), torch.full_like(x, 1 + s2)).sum(-1)
    v, r = post_var.squeeze(-1), (x - post_mu).squeeze(-1)
    se = ((2 * v**2 + 4 * r**2 * v) / (4 * s2**2) / n).sqrt()
    assert torch.all((elbo - log_px).abs() < 5 * se)


@pytest.mark.parametrize("n_samples", [1, 3])
def test_elbo_shape_and_gradients(n_samples: int) -> None:
    mu = torch.zeros(4, 2, dtype=D, requires_grad=True)
    logvar = torch.zeros(4, 2, dtype=D, requires_grad=True)
    x = torch.randn(4, 5, dtype=D, generator=gen(15))

    def log_lik(x_: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        assert z.shape == (n_samples, 4, 2)
        return -((x_.sum(-1) - z.sum(-1)) ** 2)  # (S, B)

    elbo = pr.elbo_gaussian_encoder(x, mu, logvar, log_lik, n_samples, gen(16))
    assert elbo.shape == (4,)
    elbo.sum().backward()
    assert mu.grad is not None and logvar.grad is not None


def test_elbo_bad_inputs() -> None:
    x = torch.zeros(4, 3)
    good = torch.zeros(4, 2)

    def ll(x_: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return z.sum(-1)

    with pytest.raises(ValueError, match="logvar"):
        pr.elbo_gaussian_encoder(x, good, torch.zeros(4, 3), ll)
    with pytest.raises(ValueError, match="batch"):
        pr.elbo_gaussian_encoder(torch.zeros(3, 3), good, good, ll)
    with pytest.raises(ValueError, match="n_samples"):
        pr.elbo_gaussian_encoder(x, good, good, ll, n_samples=0)
    with pytest.raises(ValueError, match=r"\(S, B\)"):
        pr.elbo_gaussian_encoder(x, good, good, lambda x_, z: z.sum())


# ----------------------------------------------------------------------------- self-check lines


def test_check_estimate_passes_and_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    est = pr.MonteCarloEstimate(torch.tensor(3.497), torch.tensor(0.006))
    check_estimate("E[X]", est, 3.5)
    assert capsys.readouterr().out == "✓ E[X] = 3.500, estimate 3.497 ± 0.006 (0.5 SE)\n"


@pytest.mark.parametrize("value", [3.54, float("nan")])
def test_check_estimate_fails_with_the_same_line(value: float) -> None:
    # 3.54 is 6.7 SE from 3.5; NaN must never pass.
    est = pr.MonteCarloEstimate(torch.tensor(value, dtype=D), torch.tensor(0.006, dtype=D))
    with pytest.raises(AssertionError, match=r"^✗ E\[X\] = 3.500, estimate"):
        check_estimate("E[X]", est, 3.5)


def test_check_estimate_on_real_draws_detects_a_wrong_formula(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Var[mu + std * eps] = std^2: passes for the right value, fails for the classic bug std.
    x = 2.0 + 0.5 * torch.randn(100_000, generator=gen(9), dtype=D)
    check_estimate("Var[X]", pr.mc_variance(x), 0.25)
    assert capsys.readouterr().out.startswith("✓ Var[X] = 0.250")
    with pytest.raises(AssertionError, match="✗"):
        check_estimate("Var[X]", pr.mc_variance(x), 0.5)


def test_check_estimate_vector_reports_the_worst_entry(capsys: pytest.CaptureFixture[str]) -> None:
    est = pr.MonteCarloEstimate(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.1]), torch.full((5,), 0.05))
    check_estimate("means", est, torch.arange(5.0))
    assert (
        capsys.readouterr().out
        == "✓ means: 5 estimates, the worst 2.0 SE from exact (limit 5 SE)\n"
    )
    with pytest.raises(AssertionError, match="the worst 2.0 SE"):
        check_estimate("means", est, torch.arange(5.0), n_se=1.5)


def test_check_close(capsys: pytest.CaptureFixture[str]) -> None:
    check_close("integral", torch.tensor(1.0 + 3e-12, dtype=D), 1.0, atol=1e-9)
    assert (
        capsys.readouterr().out
        == "✓ integral = 1.000000 (exact 1.000000, |error| 3.0e-12 ≤ 1e-09)\n"
    )
    with pytest.raises(AssertionError, match=r"^✗ integral .* > 1e-09"):
        check_close("integral", torch.tensor(1.0 + 3e-9, dtype=D), 1.0, atol=1e-9)
    with pytest.raises(AssertionError, match="✗"):
        check_close("nan", torch.tensor(float("nan")), 1.0, atol=1.0)
    check_close("vector", torch.ones(10) * 2, torch.full((10,), 2.0), rtol=1e-12)
    assert "10 values" in capsys.readouterr().out


@pytest.mark.parametrize(
    "call,err",
    [
        (lambda: check_estimate("x", (1.0, 0.1), 1.0), TypeError),  # not a MonteCarloEstimate
        (
            lambda: check_estimate(
                "x", pr.MonteCarloEstimate(torch.ones(1), torch.ones(1)), 1.0, n_se=0
            ),
            ValueError,
        ),
        (
            lambda: check_estimate(
                "x", pr.MonteCarloEstimate(torch.ones(2), torch.ones(2)), torch.ones(3)
            ),
            ValueError,
        ),
        (lambda: check_close("x", 1.0, 1.0), ValueError),  # no tolerance
        (lambda: check_close("x", 1.0, 1.0, atol=-1.0), ValueError),
        (lambda: check_close("x", "1.0", 1.0, atol=1.0), TypeError),
    ],
)
def test_self_check_bad_input(call, err: type[Exception]) -> None:
    with pytest.raises(err):
        call()
