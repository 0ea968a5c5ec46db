import pytest

from pyro_adv.optim import two_timescale_adam


def test_per_player_settings_decay_and_no_clamp():
    optim = two_timescale_adam(1e-3, discriminator_lr=4e-3, num_steps=100, decay=0.01)
    gen = optim.pt_optim_args("AutoImplicit.loc")
    disc = optim.pt_optim_args("discriminator_global.net.0.weight")
    assert gen["lr"] == 1e-3 and disc["lr"] == 4e-3
    assert gen["lrd"] ** 100 == pytest.approx(0.01) and disc["lrd"] == gen["lrd"]
    assert gen["clip_norm"] == float("inf")
    frozen_disc = two_timescale_adam(1e-3, 4e-3, num_steps=10, decay=0.5, decay_discriminator=False)
    assert frozen_disc.pt_optim_args("discriminator_x.w")["lrd"] == 1.0


def test_bad_settings():
    with pytest.raises(ValueError, match="num_steps"):
        two_timescale_adam(1e-3, decay=0.1)
    with pytest.raises(ValueError, match="positive"):
        two_timescale_adam(-1.0)
    with pytest.raises(ValueError, match="decay"):
        two_timescale_adam(1e-3, num_steps=10, decay=2.0)
