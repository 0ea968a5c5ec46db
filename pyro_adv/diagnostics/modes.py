r"""
Mode coverage of samples from a mixture of well-separated modes, with the protocol
of the 2-D experiments of VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al.
2018): a sample is *high quality* if it lies within ``num_sd`` (3) standard
deviations of its nearest mode centre; a mode is *covered* if at least
``min_count`` (1) high-quality samples are nearest to it; and the histogram of the
high-quality samples over the modes is compared with the target's (equal weights)
by the reverse KL divergence

.. math:: \mathrm{KL}(\hat q \,\|\, p) = \sum_k \hat q_k \log \frac{\hat q_k}{p_k},

which is 0 for a perfectly balanced sampler and :math:`\log K` for one that puts
everything on one of ``K`` equal modes. The papers use 2,500 samples. A diffuse
sampler that smears points over the plane covers many modes with a few
high-quality points each: read ``modes`` beside ``high_quality``.
"""

import math
from typing import NamedTuple

import torch

__all__ = ["ModeCoverage", "mode_coverage"]


class ModeCoverage(NamedTuple):
    """The result of :func:`mode_coverage`."""

    #: number of modes with at least ``min_count`` high-quality samples
    modes: int
    #: fraction of samples within ``num_sd`` sds of their nearest mode centre
    high_quality: float
    #: KL(histogram of high-quality samples over modes || target weights)
    reverse_kl: float
    #: high-quality samples per mode
    counts: tuple


def mode_coverage(samples, centres, sd, num_sd=3.0, weights=None, min_count=1):
    """
    Modes covered, fraction of high-quality samples and the reverse KL of the mode
    histogram (see the module docstring).

    :param torch.Tensor samples: ``(n, d)`` samples.
    :param torch.Tensor centres: ``(K, d)`` mode centres.
    :param float sd: the modes' standard deviation (isotropic).
    :param float num_sd: a sample within ``num_sd * sd`` of a centre is high quality.
    :param weights: the target's mode weights (default equal).
    :param int min_count: high-quality samples a mode needs to count as covered.
    :rtype: ModeCoverage
    """
    samples = torch.as_tensor(samples)
    centres = torch.as_tensor(centres).to(samples)
    if samples.dim() != 2 or centres.dim() != 2 or samples.shape[-1] != centres.shape[-1]:
        raise ValueError(
            f"mode_coverage: samples {tuple(samples.shape)} and centres "
            f"{tuple(centres.shape)} must be (n, d) and (K, d)"
        )
    if not sd > 0:
        raise ValueError(f"mode_coverage: sd must be positive, got {sd!r}")
    num_modes = centres.shape[0]
    p = torch.full((num_modes,), 1.0 / num_modes, dtype=torch.float64)
    if weights is not None:
        p = torch.as_tensor(weights, dtype=torch.float64)
        p = p / p.sum()
    finite = torch.isfinite(samples).all(-1)
    distance = torch.cdist(samples[finite], centres)
    nearest = distance.min(-1)
    good = nearest.values <= num_sd * sd
    counts = torch.bincount(nearest.indices[good], minlength=num_modes)
    total = int(counts.sum())
    if total:
        q = counts.double() / total
        kl = float(torch.where(q > 0, q * (q / p).log(), q.new_zeros(())).sum())
    else:
        kl = math.nan
    return ModeCoverage(
        modes=int((counts >= min_count).sum()),
        high_quality=total / max(len(samples), 1),
        reverse_kl=kl,
        counts=tuple(int(c) for c in counts),
    )
