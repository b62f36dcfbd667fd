"""Discrete benchmark tasks with exact metrics, for generative models of token sequences
``x1`` in ``{0 .. V-1}^L`` (int64 tensors ``(n, L)``).

Every task has the same interface, so benchmark code is generic:

- ``task.vocab`` (V), ``task.length`` (L);
- ``task.sample(n, generator=None)``: ``n`` true sequences, int64 ``(n, L)`` (the data to train
  on), drawn where the ``torch.Generator`` lives;
- ``task.evaluate(tokens)``: a dict of plain floats scoring generated sequences (each module's
  docstring says how to read its keys).

Tasks (``TASKS``, by name; ``get_task(name, **kwargs)``):

- ``"markov"``: ``MarkovChainTask`` (``flowfast.categorical.markov``), a random Markov chain:
  exact NLL of the samples against the exact entropy rate, unigram entropy, uniqueness.
- ``"brackets"``: ``BracketsTask`` (``flowfast.categorical.brackets``), balanced brackets of
  several kinds drawn uniformly: exact validity, diversity, nesting depth.
- ``"digits"``: ``BinaryDigitsTask`` (``flowfast.categorical.binary_digits``), binarized 8x8
  digits (V = 2, L = 64): classifier confidence, class balance, Hamming distance to the
  training set.

Inputs to ``evaluate`` (and the other scoring methods) are checked alike: an integer tensor or
numpy array (TypeError otherwise, floats and bools included) of shape ``(n, L)``, ``n >= 1``,
with ids in ``[0, V)`` (ValueError otherwise); they may live on any device.
"""

from __future__ import annotations

from flowfast.categorical.binary_digits import (BinaryDigitScorer, BinaryDigitsTask, binarized_digit_labels,
                                                binarized_digits, digit_split)
from flowfast.categorical.brackets import BracketsTask, dyck_paths
from flowfast.categorical.markov import MarkovChainTask

__all__ = ["TASKS", "BinaryDigitScorer", "BinaryDigitsTask", "BracketsTask", "MarkovChainTask",
           "binarized_digit_labels", "binarized_digits", "digit_split", "dyck_paths", "get_task"]

TASKS = {
    "markov": MarkovChainTask,
    "brackets": BracketsTask,
    "digits": BinaryDigitsTask,
}


def get_task(name: str, **kwargs):
    """``TASKS[name](**kwargs)``, with a clear error for an unknown name."""
    try:
        factory = TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None
    return factory(**kwargs)
