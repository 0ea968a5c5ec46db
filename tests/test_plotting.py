import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_adv.diagnostics import sbc
from pyro_adv.models import ConjugateGaussian, exponential_log_joint
from pyro_adv.plotting import (
    plot_density_1d,
    plot_density_contours,
    plot_sbc_ecdf,
    plot_training_history,
)


@pytest.fixture(autouse=True)
def no_show(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("plotting functions must not call plt.show()")

    monkeypatch.setattr(plt, "show", refuse)
    yield
    plt.close("all")


def test_contours_of_thesis_posterior_with_samples():
    samples = torch.randn(300, 2) * 3
    ax = plot_density_contours(
        lambda z: exponential_log_joint(z, 30.0),
        samples=samples,
        xlim=(-8, 8),
        ylim=(-8, 8),
        grid_size=50,
    )
    assert isinstance(ax, matplotlib.axes.Axes)
    assert ax.get_xlim() == (-8, 8)
    assert len(ax.collections) >= 2  # contour set and scatter
    # on given axes, limits from the samples
    _, given = plt.subplots()
    assert plot_density_contours(samples=samples.numpy(), ax=given) is given


def test_contours_bad_input():
    with pytest.raises(ValueError, match="needs"):
        plot_density_contours()
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        plot_density_contours(samples=torch.randn(10, 3))
    with pytest.raises(ValueError, match="one value per point"):
        plot_density_contours(lambda z: z, xlim=(-1, 1), ylim=(-1, 1), grid_size=5)


def test_density_1d_is_normalized():
    samples = torch.randn(1000)
    ax = plot_density_1d(
        samples, log_density=lambda x: -0.5 * x**2, reference=torch.randn(500), xlim=(-5, 5)
    )
    line = ax.get_lines()[0]
    xs, ys = line.get_data()
    # the unnormalized density is normalized on the plotted range: the standard normal
    assert np.interp(0.0, xs, ys) == pytest.approx(1 / np.sqrt(2 * np.pi), rel=1e-2)
    with pytest.raises(ValueError, match="one value per point"):
        plot_density_1d(log_density=lambda x: x[:3])


def test_training_history_plots():
    steps = list(range(50))
    history = {
        "step": steps,
        "loss": list(np.linspace(10, 1, 50)),
        "generator_loss": list(np.linspace(10, 1, 50)),
        "discriminator_loss": [1.38] * 50,
        "discriminator_accuracy_p": [0.5] * 50,
        "discriminator_accuracy_q": [0.55] * 50,
    }
    fig = plot_training_history(history, smooth=5)
    assert isinstance(fig, matplotlib.figure.Figure)
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.get_lines()) == 3
    assert acc_ax.get_ylabel() == "discriminator accuracy"
    plain = plot_training_history({"loss": [3.0, 2.0, 1.0]})
    assert len(plain.axes) == 1
    with pytest.raises(ValueError, match="loss"):
        plot_training_history({"step": []})
    with pytest.raises(ValueError, match="two axes"):
        _, ax = plt.subplots()
        plot_training_history(history, axes=ax)


def test_sbc_ecdf_plot():
    cg = ConjugateGaussian()

    def guide(x=None, num_data=None):
        mean, cov = cg.posterior(x)
        pyro.sample("z", dist.MultivariateNormal(mean, cov))

    result = sbc(
        cg.model,
        guide,
        None,
        num_data=3,
        observed_site="x",
        num_simulations=20,
        num_posterior_samples=19,
    )
    ax = plot_sbc_ecdf(result, names=["z[1]"])
    assert len(ax.get_lines()) == 2  # the curve and the zero line
    with pytest.raises(ValueError, match="unknown components"):
        plot_sbc_ecdf(result, names=["w"])
