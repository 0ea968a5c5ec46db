r"""
Convergence signals for :func:`~pyro_adv.training.fit`: numbers a user can trust
more than the raw adversarial loss to say when training is done, shown in the
progress bar, kept in the history, and usable as a stopping rule
(``fit(..., monitor=..., stop_when="converged")``).

Why the raw numbers are not enough: an adversarial loss measures the guide or
generator *against the current discriminator*, which moves too. A discriminator
that has frozen or lost track reports accuracy near chance and a flat loss while
the samples are still wrong (on the thesis's bivariate normal, a total-variation
critic stuck at accuracy 0.00 / 1.00 averages to chance with the mean 1.2 sd off).
Two signals that do not lean on the training discriminator:

* :class:`SmoothedLoss`: an exponential moving average of the loss with a stated
  window and its **trend**, the change of the average over the last window in
  standard errors. For :class:`~pyro_adv.infer.TraceAVB_ELBO` the loss is the
  negative ELBO estimate, and its discriminator only corrects the KL term, so a
  flat smoothed ELBO means the fit has stopped improving (it can still be stuck).
* :class:`TwoSampleCheck`: every ``every`` steps, a classifier two-sample test
  (C2ST, :func:`~pyro_adv.diagnostics.c2st`, cheap settings) between a held-out
  validation sample of the real side and fresh draws of the fitted side, with a
  classifier trained from scratch each time. 0.5 is chance: the draws cannot be
  told from the validation data. Use it for :class:`~pyro_adv.infer.Trace_GAN`
  (data against generated points) and :class:`~pyro_adv.infer.Trace_ALI` (joint
  simulations :math:`(x, z)` against :math:`(x, z \sim q(z \mid x))`).

Every signal says whether it is *settled*: the trend is within ``threshold``
standard errors, or the C2ST is within 3 binomial standard deviations of chance at
its sample size. ``fit``'s stopping rule stops once every monitor has been settled
for ``patience`` consecutive checks.
"""

import math

import torch

__all__ = ["Monitor", "SmoothedLoss", "TwoSampleCheck"]


class Monitor:
    """
    Base class of convergence signals. :func:`~pyro_adv.training.fit` calls
    :meth:`update` after every step; a monitor returns a dict of the values it
    computed at that step (recorded in the history and shown in the progress
    bar), or ``None`` when it did not check at that step.

    :ivar bool settled: whether the last check said the signal has converged
        (``None`` before the first check).
    """

    settled = None

    def update(self, step, loss, stats):
        """Called after step ``step`` with its loss and the objective's statistics."""
        raise NotImplementedError

    def postfix(self):
        """Short ``{label: text}`` for the progress bar."""
        return {}

    def reset(self):
        """Forgets the past, for a new run."""
        self.settled = None


class SmoothedLoss(Monitor):
    r"""
    The loss smoothed by an exponential moving average over ``window`` steps,
    :math:`\bar\ell_t = \bar\ell_{t-1} + \alpha(\ell_t - \bar\ell_{t-1})`,
    :math:`\alpha = 2 / (\text{window} + 1)` (the EMA whose centre of mass is that of
    a ``window``-step running mean), and its **trend**: every ``window`` steps, the
    change of :math:`\bar\ell` since the previous check divided by its standard
    error,

    .. math:: z = \frac{\bar\ell_t - \bar\ell_{t-w}}{\hat s \sqrt{2\alpha / (2 - \alpha)}},

    where :math:`\hat s` is the EMA of the loss's absolute step-to-step change
    divided by :math:`2/\sqrt\pi` (the sd of the noise if the steps were independent),
    and :math:`\alpha/(2 - \alpha)` the variance of an EMA of independent noise.
    Negative :math:`z` means the loss is still going down. The signal is
    *settled* when :math:`|z| <` ``threshold``: the smoothed loss has not moved by
    more than its noise over the last window. It is computed only after ``window``
    warm-up steps. History keys: ``"loss_ema"`` (every step) and ``"loss_trend"``
    (:math:`z`, at the checks).

    For :class:`~pyro_adv.infer.TraceAVB_ELBO` the loss is the negative ELBO
    estimate, so this is the smoothed ELBO (shown as ``-ELBO~`` in the bar).

    :param int window: steps of the average and between checks.
    :param float threshold: :math:`|z|` below which the loss counts as flat.
    """

    def __init__(self, window=100, threshold=2.0):
        if isinstance(window, bool) or int(window) != window or window < 2:
            raise ValueError(f"SmoothedLoss: window must be an integer >= 2, got {window!r}")
        if not threshold > 0:
            raise ValueError(f"SmoothedLoss: threshold must be positive, got {threshold!r}")
        self.window = int(window)
        self.threshold = float(threshold)
        self.alpha = 2.0 / (self.window + 1.0)
        self.reset()

    def reset(self):
        super().reset()
        self.ema = None
        self.noise = None
        self.last_loss = None
        self.count = 0
        self.previous = None
        self.trend = None

    def update(self, step, loss, stats):
        if not math.isfinite(loss):
            return None
        self.count += 1
        if self.ema is None:
            self.ema = loss
        else:
            self.ema += self.alpha * (loss - self.ema)
            jump = abs(loss - self.last_loss)
            self.noise = (
                jump if self.noise is None else self.noise + self.alpha * (jump - self.noise)
            )
        self.last_loss = loss
        out = {"loss_ema": self.ema}
        if self.count % self.window == 0:
            if self.previous is not None and self.noise is not None:
                # E|a - b| = 2 sd / sqrt(pi) for independent normal a, b
                sd = self.noise * math.sqrt(math.pi) / 2.0
                se = sd * math.sqrt(2.0 * self.alpha / (2.0 - self.alpha))
                se = max(se, 1e-12 * max(1.0, abs(self.ema)))
                self.trend = (self.ema - self.previous) / se
                self.settled = abs(self.trend) < self.threshold
                out["loss_trend"] = self.trend
            self.previous = self.ema
        return out

    def postfix(self):
        if self.ema is None:
            return {}
        text = f"{self.ema:.4g}"
        if self.trend is not None:
            text += f" ({self.trend:+.1f}se)"
        return {"loss~": text}


def _as_matrix(x):
    x = torch.as_tensor(x).detach()
    return x.reshape(x.shape[0], -1) if x.dim() != 2 else x


class TwoSampleCheck(Monitor):
    r"""
    A classifier two-sample test every ``every`` steps: ``num_samples`` rows of the
    held-out ``reference`` (the validation split of the data, or of simulations
    from the model) against ``num_samples`` fresh draws ``sampler(num_samples)`` of
    what is being fitted, scored by :func:`~pyro_adv.diagnostics.c2st` with a
    classifier trained from scratch (``num_folds`` folds, ``num_steps`` Adam
    steps: about a tenth of a second for 500 two-dimensional draws a side).
    0.5 is chance. The check is *settled* when the accuracy is below
    :math:`0.5 + 3 \cdot \tfrac12 / \sqrt{2n}` (three binomial standard deviations
    of chance over the :math:`2n` classified draws). History key ``"c2st"`` (at the
    checks); the reference must not be used for training.

    Example, a GAN (``gan(data, n, batch_size)`` as in the GAN guide)::

        train, valid = data[:-1000], data[-1000:]
        check = TwoSampleCheck(
            valid, lambda n: Predictive(gan, num_samples=1)(n=n)["x"][0], every=200
        )
        history = fit(svi, 5000, train, batch_size=256, monitor=check, stop_when="converged")

    :param torch.Tensor reference: held-out real rows, ``(N, ...)``.
    :param callable sampler: ``sampler(n)`` returns ``n`` fitted draws shaped like
        ``reference``'s rows; it runs under ``torch.no_grad()``.
    :param int every: steps between checks.
    :param int num_samples: draws a side (at most ``len(reference)``).
    :param int num_folds: cross-validation folds of the classifier.
    :param int num_steps: its training steps per fold.
    :param int seed: seeds the classifier and the choice of reference rows.
    """

    def __init__(
        self, reference, sampler, every=200, num_samples=500, num_folds=2, num_steps=300, seed=0
    ):
        if not callable(sampler):
            raise TypeError(f"TwoSampleCheck: sampler must be callable, got {sampler!r}")
        if isinstance(every, bool) or int(every) != every or every < 1:
            raise ValueError(f"TwoSampleCheck: every must be a positive integer, got {every!r}")
        reference = _as_matrix(reference)
        if reference.shape[0] < 10:
            raise ValueError(
                f"TwoSampleCheck: reference needs at least 10 rows, got {reference.shape[0]}"
            )
        self.reference = reference
        self.sampler = sampler
        self.every = int(every)
        self.num_samples = int(min(num_samples, reference.shape[0]))
        self.num_folds = int(num_folds)
        self.num_steps = int(num_steps)
        self.seed = seed
        self.reset()

    @property
    def chance_bound(self):
        """Accuracy below which the check counts as chance."""
        return 0.5 + 1.5 / math.sqrt(2 * self.num_samples)

    def reset(self):
        super().reset()
        self.value = None
        self.count = 0

    def check(self):
        """Runs the test now and returns the classifier's accuracy."""
        from pyro_adv.diagnostics.two_sample import c2st

        generator = torch.Generator().manual_seed(self.seed)
        rows = torch.randperm(self.reference.shape[0], generator=generator)[: self.num_samples]
        with torch.no_grad():
            fake = _as_matrix(self.sampler(self.num_samples))
        if fake.shape[1:] != self.reference.shape[1:]:
            raise ValueError(
                f"TwoSampleCheck: the sampler's draws have shape {tuple(fake.shape[1:])} a row, "
                f"the reference's rows {tuple(self.reference.shape[1:])}"
            )
        if not torch.isfinite(fake).all():
            return 1.0  # non-finite draws are told apart from any data
        ref = self.reference[rows].to(fake.device, fake.dtype)
        return c2st(
            ref.cpu(),
            fake.cpu(),
            num_folds=self.num_folds,
            num_steps=self.num_steps,
            seed=self.seed,
        )

    def update(self, step, loss, stats):
        self.count += 1
        if self.count % self.every:
            return None
        self.value = float(self.check())
        self.settled = self.value < self.chance_bound
        return {"c2st": self.value}

    def postfix(self):
        return {} if self.value is None else {"c2st": f"{self.value:.3f}"}
