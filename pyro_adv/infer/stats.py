"""
Step statistics that stay on the device until they are read.

An objective reports a handful of numbers per step (losses, discriminator
accuracies, estimates). Turning each into a Python float as it is computed is one
device read (``.item()``) each: on a GPU, a synchronization each. :class:`StepStats`
keeps them as tensors and converts all of them in one read the first time any is
looked at, so a loop that never reads them pays nothing, and one that reads them
(a progress bar, a history) pays one read a step.
"""

from collections.abc import MutableMapping

import torch

__all__ = ["Deferred", "MeanOf", "StepStats"]


class MeanOf(tuple):
    """
    A statistic that is the mean of several one-element tensors (one per
    discriminator group, say; :class:`Deferred` ones are computed), resolved by
    :class:`StepStats` as
    ``sum(floats) / len(floats)`` in Python, as if each had been read with ``.item()``.
    """


class Deferred:
    """
    A statistic computed only when :class:`StepStats` is read: ``fn()`` returns a
    one-element tensor (or a number, or ``None``). For values that cost tensor
    operations to form and that a bare training loop never looks at.
    """

    def __init__(self, fn):
        self.fn = fn


class StepStats(MutableMapping):
    """
    A dict of step statistics whose values may be one-element tensors until read.
    Reading a value (indexing, ``get``, ``items``, ``dict(stats)``, ``repr``) turns
    every tensor value into a Python ``float`` with a single device read per device
    (the values are stacked and copied together); a :class:`MeanOf` becomes the
    mean of its floats, a :class:`Deferred` is computed first, and other values
    (``None``, floats) are kept as they are. Values are exactly those of
    ``tensor.item()``: an integer tensor gives an ``int`` (float64 holds counts up
    to 2**53 exactly), a boolean one a ``bool``.

    :param dict values: the initial statistics.
    """

    def __init__(self, values=None):
        self._raw = dict(values or {})
        self._floats = None

    def __getitem__(self, key):
        return self._resolve()[key]

    def __setitem__(self, key, value):
        self._raw[key] = value
        self._floats = None

    def __delitem__(self, key):
        del self._raw[key]
        self._floats = None

    def __iter__(self):
        return iter(self._raw)

    def __len__(self):
        return len(self._raw)

    def __repr__(self):
        return repr(self._resolve())

    @property
    def resolved(self):
        """Whether the values have been turned into floats already."""
        return self._floats is not None

    def _resolve(self):
        if self._floats is None:
            for key, value in self._raw.items():
                if isinstance(value, Deferred):
                    self._raw[key] = value.fn()
                elif isinstance(value, MeanOf) and any(isinstance(v, Deferred) for v in value):
                    self._raw[key] = MeanOf(v.fn() if isinstance(v, Deferred) else v for v in value)
            tensors = {}
            for key, value in self._raw.items():
                parts = value if isinstance(value, MeanOf) else (value,)
                for i, part in enumerate(parts):
                    if torch.is_tensor(part) and part.numel() == 1:
                        tensors.setdefault(part.device, []).append(((key, i), part))
            numbers = {}
            for entries in tensors.values():
                # float64 holds every float32/float16 value exactly: these equal .item()
                stacked = torch.stack(
                    [t.detach().reshape(()).to(torch.float64) for _, t in entries]
                )
                for (where, t), number in zip(entries, stacked.tolist()):
                    # a count (an integer tensor) reads as an int, as .item() gives it
                    if t.dtype == torch.bool:
                        number = bool(number)
                    elif not t.is_floating_point():
                        number = int(number)
                    numbers[where] = number
            floats = {}
            for key, value in self._raw.items():
                if isinstance(value, MeanOf):
                    parts = [numbers.get((key, i), part) for i, part in enumerate(value)]
                    value = sum(parts) / len(parts) if parts else None
                else:
                    value = numbers.get((key, 0), value)
                floats[key] = value
            # read once: a later assignment re-reads only the new tensors
            self._floats, self._raw = floats, dict(floats)
        return self._floats
