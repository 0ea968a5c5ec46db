"""
An ImplicitEncoder mixture's learned, context-dependent weights, cheaply: draws
follow the weights, and each draw's component log-weight is what
``choice_log_prob`` returns, also through Pyro's plates. Whole fits (Trace_ALI and
TraceAVB_ELBO learning unequal mode masses) are in ``tests/infer/test_modes.py``.
"""

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch

from pyro_adv.infer.choices import choice_log_prob
from pyro_adv.nn import ImplicitEncoder


def _set_weights(encoder, probs):
    last = encoder.weight_net.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(probs).log())


def test_draws_follow_the_weights_and_report_their_log_weight():
    torch.manual_seed(0)
    encoder = ImplicitEncoder(1, 1, num_components=2)
    assert encoder.learn_weights and encoder.chooser_dim == 1
    context = torch.randn(20000, 1)
    # zero logits at the start: equal weights
    assert torch.allclose(encoder.component_weights(context[:3]), torch.full((3, 2), 0.5))
    _set_weights(encoder, [0.7, 0.3])
    q = encoder(context)
    z = q.rsample()
    log_w = q.choice_log_prob(z)
    assert log_w.shape == (20000,)
    picked_first = torch.isclose(log_w, torch.tensor(math.log(0.7)))
    assert (picked_first | torch.isclose(log_w, torch.tensor(math.log(0.3)))).all()
    assert abs(picked_first.double().mean().item() - 0.7) < 0.015
    # the log-weight carries the gradient to the weight network (the score function)
    log_w.sum().backward()
    assert encoder.weight_net.net[-1].bias.grad.abs().sum() > 0
    # another value than the last draw has no record
    assert q.choice_log_prob(z.clone()) is None
    assert torch.allclose(encoder.component_weights(context[:2]), torch.tensor([[0.7, 0.3]] * 2))


def test_the_weights_reach_the_objective_through_a_plate_and_particles():
    torch.manual_seed(0)
    encoder = ImplicitEncoder(2, 1, num_components=3)
    _set_weights(encoder, [0.2, 0.3, 0.5])
    x = torch.randn(50, 2)

    def guide():
        with pyro.plate("particles", 4, dim=-2), pyro.plate("data", 50, dim=-1):
            pyro.sample("z", encoder(x).to_event(0))

    trace = poutine.trace(guide).get_trace()
    log_w = choice_log_prob(trace.nodes["z"])
    assert log_w is not None and log_w.shape == (4, 50)
    expected = torch.tensor([0.2, 0.3, 0.5]).log()
    assert torch.isclose(log_w.unsqueeze(-1), expected).any(-1).all()


def test_equal_weights_and_one_component_make_no_choice():
    for encoder in (
        ImplicitEncoder(1, 1, num_components=2, learn_weights=False),
        ImplicitEncoder(1, 1),
    ):
        assert not encoder.learn_weights and encoder.chooser_dim == 0
        q = encoder(torch.randn(10, 1))
        assert q.choice_log_prob(q.rsample()) is None
        w = encoder.component_weights(torch.randn(4, 1))
        assert torch.allclose(w, torch.full_like(w, 1.0 / encoder.num_components))


@pytest.mark.parametrize("learn", [True, False])
def test_the_sampling_path_matches_the_training_path(learn):
    # the chooser coordinate is not a network input: a component's draws do not depend
    # on the weights (with set weights 0.9/0.1 the rarer component's draws keep their law)
    torch.manual_seed(1)
    encoder = ImplicitEncoder(1, 1, num_components=2, learn_weights=learn)
    context = torch.zeros(40000, 1)
    noise = torch.randn(40000, encoder.noise_dim + encoder.chooser_dim)
    with torch.no_grad():
        z = encoder.generate(context, noise)
    assert z.shape == (40000, 1) and torch.isfinite(z).all()
    if learn:
        _set_weights(encoder, [0.9, 0.1])
        with torch.no_grad():
            z2 = encoder.generate(context, noise)
        # same noise, same components where the bins agree: only draws whose chooser
        # moved between bins change
        u = 0.5 * torch.erfc(-noise[:, -1] / 2**0.5)
        unmoved = (u < 0.5) | (u >= 0.9)
        assert torch.allclose(z[unmoved], z2[unmoved])


def test_a_distribution_wrapping_the_encoder_keeps_the_choice():
    # as sbibm's tasks map the encoder's draws onto the prior's support
    from pyro_adv.models.sbi_tasks import TwoMoons

    torch.manual_seed(0)
    task = TwoMoons()
    encoder = ImplicitEncoder(2, 2, num_components=2)
    _set_weights(encoder, [0.7, 0.3])
    q = task.posterior(encoder, torch.zeros(500, 2))
    theta = q.rsample()
    log_w = q.choice_log_prob(theta)
    assert log_w is not None and log_w.shape == (500,)
    assert abs((log_w > math.log(0.5)).double().mean().item() - 0.7) < 0.08


def test_a_wrapper_that_hides_the_choice_is_named():
    import pyro.distributions as dist
    from pyro.infer import SVI

    from pyro_adv.distributions import ImplicitDistribution
    from pyro_adv.infer import Trace_ALI

    encoder = ImplicitEncoder(1, 1, num_components=2)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            q = encoder(x)
            # the noise is copied on its way in: the encoder's report is lost
            wrapped = ImplicitDistribution(lambda eps: q.generator(eps.clone()), q.base)
            wrapped.encoder, wrapped.context = encoder, q.context
            pyro.sample("z", wrapped)

    pyro.clear_param_store()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ALI())
    with pytest.warns(UserWarning, match="do not report their component"):
        svi.step(torch.randn(64, 1))


def test_avb_scores_each_choice_by_its_own_plate_elements_elbo():
    # a global latent mu (left out: it does not depend on z_i), a plate-local z_i drawn
    # by a mixture encoder with learned weights, and three observations per datum in a
    # nested plate (summed): the per-element ELBO the score function uses, checked
    # against the densities computed by hand from the traced values
    import pyro.distributions as dist
    from pyro.infer import SVI

    import pyro_adv.infer.trace_avb_elbo as avb_module
    from pyro_adv.infer import TraceAVB_ELBO

    torch.manual_seed(0)
    x = torch.randn(6, 3)
    encoder = ImplicitEncoder(3, 1, num_components=2)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(mu.unsqueeze(-1), 1.0).to_event(1))
            with pyro.plate("obs", 3, dim=-1):
                pyro.sample("x", dist.Normal(z[..., 0], 1.0), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        loc = pyro.param("mu_loc", torch.tensor(0.3))
        pyro.sample("mu", dist.Normal(loc, 1.0))
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", encoder(x.unsqueeze(-2)))

    seen = {}
    original = avb_module.TraceAVB_ELBO._choice_surrogate

    def spy(self, group, guide_trace, scored, log_q):
        seen.update(
            guide_trace=guide_trace, scored=scored, log_q=log_q, nesting=self.max_plate_nesting
        )
        return original(self, group, guide_trace, scored, log_q)

    pyro.clear_param_store()
    objective = TraceAVB_ELBO(num_particles=4)
    avb_module.TraceAVB_ELBO._choice_surrogate = spy
    try:
        SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), objective).step(x)
    finally:
        avb_module.TraceAVB_ELBO._choice_surrogate = original
    trace = seen["guide_trace"]
    f = avb_module.element_elbo(trace.nodes["z"], seen["scored"], seen["log_q"], seen["nesting"])
    mu = trace.nodes["mu"]["value"].reshape(4, 1, 1)
    z = trace.nodes["z"]["value"].reshape(4, 6, 1)
    by_hand = (
        dist.Normal(mu, 1.0).log_prob(z)
        + dist.Normal(z, 1.0).log_prob(x).sum(-1, keepdim=True)
        - seen["log_q"].detach().reshape(4, 6, 1)
    )
    assert f.shape[:2] == (4, 6)
    assert torch.allclose(f.reshape(4, 6, 1), by_hand, atol=1e-4)


def test_a_state_saved_with_equal_weights_is_not_loaded_into_learned_ones():
    equal = ImplicitEncoder(1, 1, num_components=2, learn_weights=False)
    with pytest.raises(ValueError, match="learn_weights=False"):
        ImplicitEncoder(1, 1, num_components=2).load_state_dict(equal.state_dict())
    learned = ImplicitEncoder(1, 1, num_components=2)
    with pytest.raises(ValueError, match="learn_weights=True"):
        ImplicitEncoder(1, 1, num_components=2, learn_weights=False).load_state_dict(
            learned.state_dict()
        )
    ImplicitEncoder(1, 1, num_components=2).load_state_dict(learned.state_dict())
