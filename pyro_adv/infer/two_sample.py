"""The bookkeeping of two-sample games (GAN, ALI): a discriminator per group of sites."""

from pyro_adv.infer.adversarial import StepLosses
from pyro_adv.infer.stats import MeanOf, StepStats

__all__ = ["TwoSampleGame"]


class TwoSampleGame:
    """
    Mixin of the objectives that play a two-sample game, :class:`Trace_GAN` and
    :class:`Trace_ALI`: each group of sites has a discriminator that separates
    samples of the p side (data, simulations) from samples of the q
    side (model, guide) under ``self.divergence``, and the step's losses,
    divergence estimate and accuracies are summed over the groups. Use it before
    :class:`~pyro_adv.infer.adversarial.AdversarialObjective` in the bases.
    """

    def _game_add(self, totals, p_logits, q_logits, penalty, generator_loss):
        """
        Adds one discriminator group of a two-sample game (GAN, ALI) to ``totals``, a
        dict started empty: both players' losses, the penalty, the divergence estimate
        and the discriminator's accuracy on each side.
        """
        div = self.divergence
        d_loss = _add(totals.get("d_loss"), div.discriminator_loss(p_logits, q_logits))
        totals["d_loss"] = d_loss + penalty
        totals["penalty"] = _add(totals.get("penalty"), penalty.detach())
        totals["g_loss"] = _add(totals.get("g_loss"), generator_loss)
        estimate = div.estimate(p_logits, q_logits).detach()
        totals["estimate"] = _add(totals.get("estimate"), estimate)
        a_p, a_q = div.accuracy(p_logits, q_logits)
        totals.setdefault("acc_p", []).append(a_p)
        totals.setdefault("acc_q", []).append(a_q)

    def _game_result(self, totals):
        """``_losses``'s return value from the ``totals`` of :meth:`_game_add`."""
        estimate, g_loss, d_loss = totals["estimate"], totals["g_loss"], totals["d_loss"]
        # kept on the device until read (one read for all; see StepStats)
        stats = StepStats(
            {
                "loss": estimate,
                "generator_loss": g_loss.detach(),
                "discriminator_loss": d_loss.detach(),
                "discriminator_accuracy_p": MeanOf(totals["acc_p"]),
                "discriminator_accuracy_q": MeanOf(totals["acc_q"]),
                "divergence": estimate,
            }
        )
        if getattr(self.divergence, "has_penalty", False):
            stats["gradient_penalty"] = totals["penalty"]
        return StepLosses(estimate, g_loss, d_loss, stats)


def _add(total, value):
    # the first term as it is: ``0.0 + tensor`` would be one more tensor op
    return value if total is None else total + value
