"""Guidance: classifier-free guidance of a conditional model, and classifier guidance of any model.

Two conventions for the same classifier-free combination are in use (book: Guidance, Part 4):

- Ho & Salimans 2022, eq. 6: eps_tilde = (1 + w) eps(x_t, y) - w eps(x_t, null), w >= 0;
- diffusers' ``guidance_scale`` (and this package's): eps_tilde = eps(x_t, null) + s (eps(x_t, y) - eps(x_t, null)).

They are the same line through eps(x_t, null) and eps(x_t, y) with s = 1 + w: ``guidance_scale = 1``
(w = 0) is the plain conditional model, ``guidance_scale = 0`` (w = -1) the unconditional one.
Classifier guidance with a noise-aware classifier at scale s steers like classifier-free guidance
at the same s (Dhariwal & Nichol 2021, sec. 4; Ho & Salimans 2022, sec. 3.2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from diffusion_tutorial.checks import check_float_in_range, check_labels
from diffusion_tutorial.core.parameterization import Model, x0_from_eps
from diffusion_tutorial.core.schedules import NoiseSchedule

__all__ = [
    "classifier_free_guidance",
    "guidance_scale_from_weight",
    "guidance_weight_from_scale",
    "classifier_guidance",
    "x0_hat_classifier",
]

NoisyClassifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``classifier(x_t, t) -> logits`` (B, num_classes): a classifier of *noisy* inputs at book time t."""


def guidance_scale_from_weight(w: float) -> float:
    """s = 1 + w: diffusers' ``guidance_scale`` from Ho & Salimans' guidance weight w (w >= -1).

    Book: Guidance (Part 4), eq. (eq-cfg-conventions).
    """
    return 1.0 + check_float_in_range("w", w, -1.0, None)


def guidance_weight_from_scale(guidance_scale: float) -> float:
    """w = s - 1: Ho & Salimans' guidance weight from diffusers' ``guidance_scale`` s (s >= 0).

    Book: Guidance (Part 4), eq. (eq-cfg-conventions).
    """
    return check_float_in_range("guidance_scale", guidance_scale, 0.0, None) - 1.0


def _time_batch(t: torch.Tensor | int, x_t: torch.Tensor) -> torch.Tensor:
    """t as int64 (B,) on x_t's device (a scalar t is broadcast to the batch)."""
    t = torch.as_tensor(t, device=x_t.device)
    return t.expand(x_t.shape[0]) if t.ndim == 0 else t


def classifier_free_guidance(
    model: nn.Module, y: torch.Tensor, guidance_scale: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap a conditional model as eps(x_t, t) = eps_uncond + s (eps_cond - eps_uncond), s = guidance_scale.

    ``y``: integer (B,) labels in 0..num_classes-1 (not None, bool or float: use the model
    itself for unconditional samples); the unconditional prediction uses the null label
    ``model.config.num_classes``. Each call runs ONE batched forward pass on the concatenation
    [x_t; x_t] with labels [y; null], so guidance costs a batch of 2B, not two passes.
    The result plugs into any sampler: ``ddim_sample(classifier_free_guidance(m, y, 3.0), ...)``.
    ``guidance_scale`` is diffusers' s; Ho & Salimans' weight is w = s - 1
    (:func:`guidance_scale_from_weight`).
    Book: Guidance (Part 4), eq. (eq-cfg-conventions). Ho & Salimans 2022, eq. 6 and Algorithm 2.
    """
    num_classes = getattr(getattr(model, "config", None), "num_classes", None)
    if num_classes is None:
        raise ValueError(
            "classifier_free_guidance needs a conditional model (config.num_classes set)"
        )
    guidance_scale = check_float_in_range("guidance_scale", guidance_scale, 0.0, None)  # s
    y = check_labels("y", y, None, num_classes - 1)  # (B,) int64; None, bool or float: TypeError

    def guided_eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B = x_t.shape[0]
        if B != y.shape[0]:
            raise ValueError(f"x_t has batch {B} but y has {y.shape[0]} labels")
        # Check t's shape against the caller's batch B (the model sees 2B and would report
        # that); its dtype and values are the model's to check (integer or fractional book t).
        t = _time_batch(t, x_t)  # (B,)
        if t.shape != (B,):
            raise ValueError(
                f"t must have shape ({B},) (one time per example) or be a scalar, got "
                f"{tuple(t.shape)}"
            )
        labels = y.to(x_t.device)  # (B,)
        null = torch.full_like(labels, num_classes)  # (B,)
        try:
            eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
        except ValueError as err:  # e.g. a wrong image size, reported for the doubled batch
            raise ValueError(
                f"classifier_free_guidance: for your x_t of shape {tuple(x_t.shape)} the model "
                f"is called on [x_t; x_t], a batch of 2B = {2 * B}, and refused it: {err}"
            ) from err
        if not isinstance(eps, torch.Tensor) or eps.shape != (2 * B, *x_t.shape[1:]):
            got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
            half = (B, *got[1:]) if isinstance(got, tuple) and got and got[0] == 2 * B else got
            raise ValueError(
                f"model(x_t, t, y) must return a tensor shaped like x_t, {tuple(x_t.shape)}, for "
                f"the conditional and the unconditional half; got {half} per half"
            )
        eps_cond, eps_uncond = eps.chunk(2)  # each (B, ...)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)  # eps_u + s (eps_c - eps_u)

    return guided_eps


def classifier_guidance(
    model: Model,
    classifier: NoisyClassifier,
    y: torch.Tensor,
    guidance_scale: float,
    schedule: NoiseSchedule,
) -> Model:
    """Wrap a model as eps_tilde(x_t, t) = eps(x_t, t) - s sigma_t grad_{x_t} log p_phi(y | x_t, t).

    The score of the model, -eps / sigma_t, plus s times the score of the classifier:
    grad log p(x_t) + s grad log p(y | x_t), written as a noise prediction. ``classifier(x_t, t)``
    returns logits (B, K) of *noisy* inputs (a noise-aware classifier, or
    :func:`x0_hat_classifier` around a clean one); log p_phi = log_softmax(logits)[y]. ``y``:
    integer (B,) labels in 0..K-1, ``guidance_scale`` s >= 0 (s = 1: the exact conditional
    score when the classifier is exact). The gradient is taken with autograd even inside the
    samplers' no-grad (and inference) mode, with respect to x_t only (no parameter gradients
    accumulate). Never guide with the classifier that evaluates the samples: guidance optimises
    against it, so its verdict would no longer measure anything.
    Book: Guidance (Part 4), eq. (eq-cfg-classifier-guidance). Dhariwal & Nichol 2021, sec. 4.2
    (their eps_hat = eps_theta(x_t) - sqrt(1 - alpha_bar_t) grad log p_phi(y | x_t), scaled by s).
    """
    if not callable(model) or not callable(classifier):
        raise TypeError("model and classifier must be callables (x_t, t) -> tensor")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    s = check_float_in_range("guidance_scale", guidance_scale, 0.0, None)
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise TypeError(f"y must be an integer tensor (B,) of class labels, got {y!r:.60}")
    if y.ndim != 1:
        raise ValueError(f"y must have shape (B,), got {tuple(y.shape)}")
    y = y.to(torch.int64)  # (B,); the range 0..K-1 is checked against the logits at each call

    def guided_eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x_t.shape[0] != y.shape[0]:
            raise ValueError(f"x_t has batch {x_t.shape[0]} but y has {y.shape[0]} labels")
        t_b = _time_batch(t, x_t)  # (B,)
        eps = model(x_t, t_b)  # (B, ...)
        if s == 0:
            return eps
        grad = classifier_log_prob_grad(classifier, x_t, t_b, y)  # (B, ...)
        sigma = schedule.sigma.to(x_t.device, x_t.dtype)[t_b]  # (B,)
        return eps - s * sigma.view(-1, *[1] * (x_t.ndim - 1)) * grad

    return guided_eps


def classifier_log_prob_grad(
    classifier: NoisyClassifier, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """grad_{x_t} log p_phi(y | x_t, t) = grad_{x_t} log_softmax(classifier(x_t, t))[y], shape of x_t.

    Each example's log-probability depends only on its own x_t, so the gradient of their sum
    is the batch of per-example gradients. Works inside no-grad and inference mode.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = x_t.detach().clone().requires_grad_(True)  # a normal (non-inference) leaf
        logits = classifier(x, t.clone())  # (B, K)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"classifier(x_t, t) must return logits (B, K) with B = {x.shape[0]}, "
                f"got shape {tuple(logits.shape)}"
            )
        labels = check_labels("y", y, x.shape[0], logits.shape[1] - 1).to(logits.device)
        log_p = logits.log_softmax(dim=1).gather(1, labels[:, None]).sum()
        (grad,) = (
            torch.autograd.grad(log_p, x, allow_unused=True) if log_p.requires_grad else (None,)
        )
    if grad is None:
        raise ValueError(
            "the classifier's logits do not depend on x_t (no gradient reaches it): "
            "classifier(x_t, t) must compute its logits from x_t with autograd on, without "
            ".detach(), torch.no_grad() or a round trip through NumPy"
        )
    return grad.detach()


def x0_hat_classifier(
    model: Model, classifier: Callable[[torch.Tensor], torch.Tensor], schedule: NoiseSchedule
) -> NoisyClassifier:
    """A clean classifier read at the denoiser's guess: logits(x_t, t) = classifier(x0_hat(x_t, t)).

    x0_hat = (x_t - sigma_t eps(x_t, t)) / sqrt(alpha_bar_t) (Tweedie's posterior mean). This is an
    APPROXIMATION, log p(y | x_t) ~ log p_phi(y | E[x_0 | x_t]): it would be exact only if
    p(x_0 | x_t) were a point mass. It is good at small t and poor at large t, where x0_hat is a
    blurred average of many digits. Gradients flow through the model (a backward pass of the
    denoiser per step). ``classifier(x_0) -> logits`` (B, K) must be in eval mode (BatchNorm).
    Book: Guidance (Part 4), eq. (eq-cfg-x0hat). As in Chung et al. 2023 (DPS) and universal guidance.
    """
    if not callable(model) or not callable(classifier):
        raise TypeError("model and classifier must be callables")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if isinstance(classifier, nn.Module) and classifier.training:
        raise ValueError("classifier is in training mode: call classifier.eval() first")

    def logits(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_b = _time_batch(t, x_t)  # (B,)
        x0_hat = x0_from_eps(x_t, model(x_t, t_b), t_b, schedule)  # (B, ...)
        return classifier(x0_hat)  # (B, K)

    return logits
