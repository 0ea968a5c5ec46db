r"""
Marginal log-likelihood of a latent-variable model from any encoder's draws,
explicit or implicit.

A held-out :math:`\log p(x)` compares models fairly only when it is estimated the
same way for all of them. An implicit encoder (AVB, ALI) has no density to put in
an importance-weighted bound (Burda, Grosse and Salakhutdinov 2016), and using a
discriminator's estimate would favor whoever has the better discriminator. Here
every encoder only supplies *draws* :math:`z \sim q(z \mid x)`; for each ``x`` a
Gaussian proposal is fitted to them,

.. math::

    r(z \mid x) = N\big(z;\ \hat\mu_x,\ c^2 \hat\Sigma_x\big),

with the draws' mean and covariance inflated by ``inflation`` :math:`c > 1` (a
proposal a little wider than the posterior keeps the importance weights'
variance finite), and

.. math::

    \log \hat p(x) = \log \frac1K \sum_{k=1}^K \frac{p(x, z_k)}{r(z_k \mid x)},
    \qquad z_k \sim r(\cdot \mid x).

:math:`\hat p(x)` is unbiased for any proposal, so :math:`\log \hat p(x)` is a
stochastic lower bound in expectation (Jensen), tight as :math:`K` grows or as
:math:`r` approaches the posterior. A better encoder gives a better proposal and
so a tighter estimate, but the quantity estimated, the model's :math:`\log p(x)`,
does not depend on the encoder. Kish's effective sample size of the weights is
returned with it: a small one means the proposal missed posterior mass and the
estimate is loose.
"""

import math
from typing import NamedTuple

import torch

__all__ = ["LogLikelihoodEstimate", "fitted_proposal_log_likelihood"]


class LogLikelihoodEstimate(NamedTuple):
    """
    Result of :func:`fitted_proposal_log_likelihood`, one entry per context.

    :ivar torch.Tensor log_likelihood: :math:`\\log \\hat p(x)`, shape ``(B,)``.
    :ivar torch.Tensor effective_sample_size: Kish's ESS of the ``K`` weights, ``(B,)``.
    """

    log_likelihood: torch.Tensor
    effective_sample_size: torch.Tensor


def fitted_proposal_log_likelihood(
    log_joint,
    draws,
    num_samples=1000,
    inflation=1.2,
    jitter=1e-6,
    chunk_size=None,
    generator=None,
):
    r"""
    :math:`\log \hat p(x)` by importance sampling from a Gaussian fitted to an
    encoder's draws (see the module docstring), for a batch of ``B`` contexts.

    Example (a VAE with decoder logits ``decoder(z)`` and any encoder)::

        def log_joint(z):                      # z: (K, B, D) -> (K, B)
            prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
            return prior + dist.Bernoulli(logits=decoder(z)).log_prob(x).sum(-1)

        draws = encoder(x).sample((500,))      # (500, B, D), any sampler
        est = fitted_proposal_log_likelihood(log_joint, draws, num_samples=1000)
        est.log_likelihood.mean()              # held-out log-likelihood per datum

    :param callable log_joint: maps latents of shape ``(k, B, D)`` to
        :math:`\log p(x_b, z)` of shape ``(k, B)``.
    :param torch.Tensor draws: encoder draws of shape ``(S, B, D)`` with ``S > D``
        (at least a few times ``D`` for a stable covariance).
    :param int num_samples: ``K``, importance samples per context.
    :param float inflation: :math:`c \ge 1`, the factor on the fitted standard deviations.
    :param float jitter: added to the fitted covariance's diagonal, relative to its
        mean variance, so that a (nearly) degenerate set of draws still has a density.
    :param int chunk_size: evaluate ``log_joint`` on this many samples at a time
        (default: all ``K`` at once).
    :param torch.Generator generator: for the proposal's draws (default: torch's global
        random state).
    :rtype: LogLikelihoodEstimate
    """
    if not torch.is_tensor(draws) or draws.dim() != 3:
        shape = tuple(draws.shape) if torch.is_tensor(draws) else type(draws).__name__
        raise ValueError(
            "fitted_proposal_log_likelihood: draws must be a tensor of shape (S, B, D), "
            f"got {shape}"
        )
    num_draws, batch, dim = draws.shape
    if num_draws <= dim:
        raise ValueError(
            f"fitted_proposal_log_likelihood: {num_draws} draws cannot fit a covariance in "
            f"{dim} dimensions; pass at least {dim + 1} (a few times more for a stable fit)"
        )
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(
            f"fitted_proposal_log_likelihood: num_samples must be a positive integer, "
            f"got {num_samples}"
        )
    if not inflation >= 1.0:
        raise ValueError(
            f"fitted_proposal_log_likelihood: inflation must be >= 1, got {inflation} (a "
            "proposal narrower than the draws risks weights of infinite variance)"
        )
    if not torch.isfinite(draws).all():
        raise ValueError("fitted_proposal_log_likelihood: draws contain NaN or inf")
    num_samples = int(num_samples)
    chunk_size = num_samples if chunk_size is None else int(chunk_size)

    with torch.no_grad():
        draws = draws.detach()
        mean = draws.mean(0)  # (B, D)
        centered = (draws - mean).transpose(0, 1)  # (B, S, D)
        cov = centered.transpose(-1, -2) @ centered / (num_draws - 1)  # (B, D, D)
        scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(torch.finfo(cov.dtype).tiny)
        eye = torch.eye(dim, dtype=cov.dtype, device=cov.device)
        cov = inflation**2 * cov + jitter * scale[:, None, None] * eye
        chol = torch.linalg.cholesky(cov)  # (B, D, D)
        half_log_det = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (B,)

        log_w = []
        for start in range(0, num_samples, chunk_size):
            k = min(chunk_size, num_samples - start)
            eps = torch.randn(
                (k, batch, dim), dtype=draws.dtype, device=draws.device, generator=generator
            )
            z = mean + (chol @ eps.unsqueeze(-1)).squeeze(-1)  # (k, B, D)
            log_r = -0.5 * eps.pow(2).sum(-1) - half_log_det - 0.5 * dim * math.log(2 * math.pi)
            log_p = log_joint(z)
            if not torch.is_tensor(log_p) or log_p.shape != (k, batch):
                got = tuple(log_p.shape) if torch.is_tensor(log_p) else type(log_p).__name__
                raise ValueError(
                    f"fitted_proposal_log_likelihood: log_joint must map latents of shape "
                    f"{(k, batch, dim)} to log p(x, z) of shape {(k, batch)}, got {got}"
                )
            log_w.append(log_p - log_r)
        log_w = torch.cat(log_w)  # (K, B)
        log_likelihood = log_w.logsumexp(0) - math.log(num_samples)
        ess = (2 * log_w.logsumexp(0) - (2 * log_w).logsumexp(0)).exp()
    return LogLikelihoodEstimate(log_likelihood, ess)
