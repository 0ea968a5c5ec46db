"""The bookkeeping of two-sample games (GAN, ALI): a discriminator per group of sites."""

from pyro_adv.infer.adversarial import StepLosses

__all__ = ["TwoSampleGame"]


class TwoSampleGame:
    """
    Mixin of the objectives that play a two-sample game, :class:`Trace_GAN` and
    :class:`Trace_ALI`: each group of sites has a discriminator that separates
    "real" from "fake" samples under ``self.divergence``, and the step's losses,
    divergence estimate and accuracies are summed over the groups. Use it before
    :class:`~pyro_adv.infer.adversarial.AdversarialObjective` in the bases.
    """

    def _game_add(self, totals, real_logits, fake_logits, penalty, generator_loss):
        """
        Adds one discriminator group of a two-sample game (GAN, ALI) to ``totals``, a
        dict started empty: both players' losses, the penalty, the divergence estimate
        and the discriminator's accuracy on each side.
        """
        div = self.divergence
        d_loss = totals.get("d_loss", 0.0) + div.discriminator_loss(real_logits, fake_logits)
        totals["d_loss"] = d_loss + penalty
        totals["penalty"] = totals.get("penalty", 0.0) + penalty.detach()
        totals["g_loss"] = totals.get("g_loss", 0.0) + generator_loss
        estimate = div.estimate(real_logits, fake_logits).detach()
        totals["estimate"] = totals.get("estimate", 0.0) + estimate
        a_real, a_fake = div.accuracy(real_logits, fake_logits)
        totals.setdefault("acc_real", []).append(a_real)
        totals.setdefault("acc_fake", []).append(a_fake)

    def _game_result(self, totals):
        """``_losses``'s return value from the ``totals`` of :meth:`_game_add`."""
        estimate, g_loss, d_loss = totals["estimate"], totals["g_loss"], totals["d_loss"]
        acc_real, acc_fake = totals["acc_real"], totals["acc_fake"]
        stats = {
            "loss": estimate.item(),
            "generator_loss": g_loss.item(),
            "discriminator_loss": d_loss.item(),
            "discriminator_accuracy_real": sum(acc_real) / len(acc_real),
            "discriminator_accuracy_fake": sum(acc_fake) / len(acc_fake),
            "divergence": estimate.item(),
        }
        if getattr(self.divergence, "has_penalty", False):
            stats["gradient_penalty"] = totals["penalty"].item()
        return StepLosses(estimate, g_loss, d_loss, stats)
