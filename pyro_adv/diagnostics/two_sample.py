r"""
Two-sample metrics: how far are approximate posterior samples from reference
samples (an exact sampler, long MCMC)?

* :func:`c2st`: classifier two-sample test (Lopez-Paz and Oquab 2017), as in
  the sbibm benchmark (Lueckmann et al. 2021): cross-validated accuracy of a
  classifier telling the two samples apart; 0.5 means indistinguishable, 1.0
  fully separable. A fast torch classifier with early stopping, for tests.
* :func:`c2st_sbibm`: the same test with sbibm's exact classifier and folds
  (scikit-learn), for figures that sit beside sbibm's published ones.
* :func:`mmd`: maximum mean discrepancy with a Gaussian kernel whose bandwidth
  is the median pairwise distance (Gretton et al. 2012).
* :func:`energy_distance`: Székely and Rizzo's energy distance.
* :func:`moment_errors`: mean error in units of the reference sd and variance
  ratio, per dimension.

Samples are ``(num_samples, dim)`` tensors or arrays (1-D inputs are one
dimension); all randomness takes a ``seed``.
"""

import math

import numpy as np
import torch
from torch import nn

from pyro_adv.diagnostics._util import as_numpy, seeded

__all__ = ["c2st", "c2st_sbibm", "energy_distance", "mmd", "moment_errors", "two_sample_metrics"]


def _pair(x, y, min_samples=2):
    x = torch.as_tensor(as_numpy(x, "x"))
    y = torch.as_tensor(as_numpy(y, "y"))
    x = x.unsqueeze(-1) if x.dim() == 1 else x
    y = y.unsqueeze(-1) if y.dim() == 1 else y
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(
            f"samples must be (num_samples, dim), got shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"the samples have different dimensions: {tuple(x.shape)} vs {tuple(y.shape)}"
        )
    if min(x.shape[0], y.shape[0]) < min_samples:
        raise ValueError(
            f"need at least {min_samples} samples on each side, got {x.shape[0]} and {y.shape[0]}"
        )
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("samples contain NaN or inf")
    return x, y


def _subsample(x, max_samples):
    if max_samples is not None and x.shape[0] > max_samples:
        return x[torch.randperm(x.shape[0])[:max_samples]]
    return x


def _train_classifier(inputs, labels, hidden, num_steps, lr):
    net = nn.Sequential(
        nn.Linear(inputs.shape[1], hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 1),
    ).to(inputs)
    # early stopping on a held-out tenth, as sklearn's MLPClassifier in sbibm does:
    # it keeps a classifier from memorizing two samples of the same distribution
    n_val = max(1, inputs.shape[0] // 10)
    perm = torch.randperm(inputs.shape[0])
    val, train = perm[:n_val], perm[n_val:]
    optim = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    best, best_state, patience = math.inf, None, 0
    for step in range(num_steps):
        optim.zero_grad()
        loss = loss_fn(net(inputs[train]).squeeze(-1), labels[train])
        loss.backward()
        optim.step()
        if step % 10 == 9:
            with torch.no_grad():
                val_loss = loss_fn(net(inputs[val]).squeeze(-1), labels[val]).item()
            if val_loss < best - 1e-3:
                best, patience = val_loss, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                patience += 1
                if patience >= 5:
                    break
    if best_state is not None:
        net.load_state_dict(best_state)
    return net


def c2st(x, y, num_folds=5, seed=0, hidden_dim=None, num_steps=1000, lr=1e-2, z_score=True):
    r"""
    Classifier two-sample test (Lopez-Paz and Oquab 2017) as in sbibm (Lueckmann
    et al. 2021): the mean ``num_folds``-fold cross-validated accuracy of an MLP
    (two hidden ReLU layers of width ``10 * dim``, Adam, early stopping) trained
    to tell ``x`` from ``y``, on data z-scored with ``x``'s mean and sd.

    .. math:: \mathrm{C2ST} = \frac1K \sum_{k=1}^K \mathrm{acc}_k \in [0, 1],
              \quad 0.5 \Leftrightarrow \text{indistinguishable}.

    With unequal sample sizes the larger sample is randomly subsampled (seeded) to
    the size of the smaller, so that chance accuracy stays 0.5; otherwise a
    classifier that always answers the majority class would score above 0.5.

    :param x: reference samples, ``(n, dim)``.
    :param y: samples to test, ``(m, dim)``.
    :param int num_folds: cross-validation folds.
    :param int seed: seeds shuffling and network initialization.
    :param int hidden_dim: hidden width (default ``max(10 * dim, 16)``).
    :param int num_steps: maximum full-batch Adam steps per fold.
    :param float lr: learning rate.
    :param bool z_score: standardize with ``x``'s moments.
    :rtype: float
    """
    x, y = _pair(x, y, min_samples=2 * num_folds)
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    x, y = x.float(), y.float()
    if x.shape[0] != y.shape[0]:
        size = min(x.shape[0], y.shape[0])
        with seeded(seed):
            x, y = _subsample(x, size), _subsample(y, size)
    if z_score:
        loc, scale = x.mean(0), x.std(0).clamp_min(1e-12)
        x, y = (x - loc) / scale, (y - loc) / scale
    inputs = torch.cat([x, y])
    labels = torch.cat([torch.zeros(x.shape[0]), torch.ones(y.shape[0])])
    hidden = hidden_dim or max(10 * x.shape[1], 16)
    accuracies = []
    threads = torch.get_num_threads()
    # the networks are tiny: synchronizing threads costs far more than it saves,
    # and on shared cores it can slow training down by an order of magnitude
    torch.set_num_threads(1)
    try:
        with seeded(seed):
            folds = torch.randperm(inputs.shape[0]).chunk(num_folds)
            for k, test in enumerate(folds):
                train = torch.cat([f for j, f in enumerate(folds) if j != k])
                net = _train_classifier(inputs[train], labels[train], hidden, num_steps, lr)
                with torch.no_grad():
                    predicted = (net(inputs[test]).squeeze(-1) > 0).float()
                accuracies.append((predicted == labels[test]).float().mean().item())
    finally:
        torch.set_num_threads(threads)
    return float(np.mean(accuracies))


def c2st_sbibm(x, y, seed=1, num_folds=5, z_score=True):
    r"""
    The classifier two-sample test exactly as sbibm computes it
    (``sbibm.metrics.c2st``, the metric of Lueckmann et al. 2021's tables):

    * both samples as float32, z-scored by the mean and (unbiased) sd of ``x``;
    * scikit-learn's ``MLPClassifier(activation="relu", hidden_layer_sizes=(10 * dim,
      10 * dim), max_iter=10000, solver="adam", random_state=seed)``, all else default
      (minibatches of 200, stopping when the training loss stalls for 10 epochs);
    * ``KFold(n_splits=num_folds, shuffle=True, random_state=seed)`` folds over the
      pooled samples and ``cross_val_score(..., scoring="accuracy")``; the mean accuracy.

    sbibm calls it with the reference draws as ``x``, the algorithm's as ``y``, 10,000
    each, and its default ``seed=1``. Unlike :func:`c2st` it does not balance unequal
    sample sizes (sbibm's never differ). It costs tens of seconds to minutes per
    call on one core at 10,000 draws a side; use :func:`c2st` in tests.

    .. math:: \mathrm{C2ST} = \frac1K \sum_{k=1}^K \mathrm{acc}_k,
              \quad 0.5 \Leftrightarrow \text{indistinguishable}.

    :param x: reference samples, ``(n, dim)``.
    :param y: samples to test, ``(m, dim)``.
    :param int seed: the classifier's and the folds' ``random_state`` (sbibm: 1).
    :param int num_folds: cross-validation folds (sbibm: 5).
    :param bool z_score: standardize with ``x``'s moments (sbibm's tables: yes).
    :rtype: float
    :raises ImportError: without scikit-learn.
    """
    try:
        from sklearn.model_selection import KFold, cross_val_score
        from sklearn.neural_network import MLPClassifier
    except ImportError as e:  # pragma: no cover - scikit-learn is a dev extra
        raise ImportError("c2st_sbibm needs scikit-learn: pip install scikit-learn") from e
    x, y = _pair(x, y, min_samples=num_folds)
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    x, y = x.float(), y.float()
    if z_score:
        loc, scale = x.mean(0), x.std(0)
        if not (scale > 0).all():
            raise ValueError("x has a dimension with zero variance: cannot z-score by it")
        x, y = (x - loc) / scale, (y - loc) / scale
    dim = x.shape[1]
    classifier = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(10 * dim, 10 * dim),
        max_iter=10000,
        solver="adam",
        random_state=seed,
    )
    data = np.concatenate([x.numpy(), y.numpy()])
    target = np.concatenate([np.zeros(x.shape[0]), np.ones(y.shape[0])])
    folds = KFold(n_splits=num_folds, shuffle=True, random_state=seed)
    scores = cross_val_score(classifier, data, target, cv=folds, scoring="accuracy")
    return float(np.float32(np.mean(scores)))


def _median_bandwidth(z):
    d = torch.cdist(z, z)
    off = d[~torch.eye(z.shape[0], dtype=torch.bool)]
    h = off.median()
    return h if h > 0 else off.mean().clamp_min(1e-12)


def mmd(x, y, bandwidth=None, max_samples=2000, seed=0):
    r"""
    Unbiased estimate of the squared maximum mean discrepancy (Gretton, Borgwardt,
    Rasch, Schölkopf and Smola 2012) with a Gaussian kernel
    :math:`k(a, b) = \exp(-\|a - b\|^2 / (2 h^2))`:

    .. math:: \widehat{\mathrm{MMD}}^2 = \frac{1}{n(n-1)}\sum_{i \ne j} k(x_i, x_j)
              + \frac{1}{m(m-1)}\sum_{i \ne j} k(y_i, y_j)
              - \frac{2}{nm}\sum_{i, j} k(x_i, y_j).

    Near 0 (it can be slightly negative) for samples of the same distribution;
    at most 2.

    :param x: samples ``(n, dim)``.
    :param y: samples ``(m, dim)``.
    :param float bandwidth: kernel width ``h``; default: the median pairwise
        distance of the pooled samples (median heuristic).
    :param int max_samples: random subsample per side (the cost is quadratic).
    :param int seed: seeds the subsampling.
    :rtype: float
    """
    x, y = _pair(x, y, min_samples=2)
    with seeded(seed):
        x, y = _subsample(x, max_samples), _subsample(y, max_samples)
    h = torch.as_tensor(bandwidth, dtype=x.dtype) if bandwidth is not None else None
    if h is None:
        h = _median_bandwidth(torch.cat([x, y]))
    elif h <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    n, m = x.shape[0], y.shape[0]

    def k(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * h * h))

    kxx = (k(x, x).sum() - n) / (n * (n - 1))
    kyy = (k(y, y).sum() - m) / (m * (m - 1))
    kxy = k(x, y).mean()
    return float(kxx + kyy - 2 * kxy)


def energy_distance(x, y, max_samples=2000, seed=0):
    r"""
    Energy distance (Székely and Rizzo 2013), with U-statistics within samples:

    .. math:: \mathcal{E} = 2\,\mathbb{E}\|X - Y\| - \mathbb{E}\|X - X'\| - \mathbb{E}\|Y - Y'\|,

    zero if and only if the distributions are equal.

    :param x: samples ``(n, dim)``.
    :param y: samples ``(m, dim)``.
    :param int max_samples: random subsample per side (the cost is quadratic).
    :param int seed: seeds the subsampling.
    :rtype: float
    """
    x, y = _pair(x, y, min_samples=2)
    with seeded(seed):
        x, y = _subsample(x, max_samples), _subsample(y, max_samples)
    n, m = x.shape[0], y.shape[0]
    exy = torch.cdist(x, y).mean()
    exx = torch.cdist(x, x).sum() / (n * (n - 1))
    eyy = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * exy - exx - eyy)


def moment_errors(samples, reference):
    r"""
    Per-dimension moment errors of ``samples`` against ``reference``:

    * ``mean_error``: :math:`|\bar z - \bar z_{ref}| / \mathrm{sd}_{ref}`;
    * ``variance_ratio``: :math:`\mathrm{Var}(z) / \mathrm{Var}_{ref}` (1 is right;
      below 1 the approximation under-disperses).

    :param samples: ``(n, dim)`` samples.
    :param reference: ``(m, dim)`` reference samples.
    :returns: dict of numpy arrays of shape ``(dim,)``.
    """
    x, ref = _pair(samples, reference, min_samples=2)
    ref_sd = ref.std(0).clamp_min(1e-12)
    return {
        "mean_error": ((x.mean(0) - ref.mean(0)).abs() / ref_sd).numpy(),
        "variance_ratio": (x.var(0) / ref_sd.pow(2)).numpy(),
    }


def two_sample_metrics(samples, reference, seed=0, c2st_kwargs=None):
    """
    All of the above in one dict: ``c2st``, ``mmd``, ``energy_distance``, and the
    worst-dimension ``max_mean_error`` and ``min_variance_ratio`` /
    ``max_variance_ratio``.

    :param samples: ``(n, dim)`` approximate samples.
    :param reference: ``(m, dim)`` reference samples.
    :param int seed: seeds every metric.
    :rtype: dict
    """
    moments = moment_errors(samples, reference)
    return {
        "c2st": c2st(reference, samples, seed=seed, **(c2st_kwargs or {})),
        "mmd": mmd(reference, samples, seed=seed),
        "energy_distance": energy_distance(reference, samples, seed=seed),
        "max_mean_error": float(moments["mean_error"].max()),
        "min_variance_ratio": float(moments["variance_ratio"].min()),
        "max_variance_ratio": float(moments["variance_ratio"].max()),
    }
