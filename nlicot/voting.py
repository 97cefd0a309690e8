"""Self-consistency: a majority vote over the labels of k sampled chains, with agreement as the confidence.

The rules, all deterministic:

* Only parsed labels vote. **Confidence = agreement = votes for the winner / k**, counting every chain, so
  unparseable chains lower the confidence instead of vanishing (3 of 8 parsed, all 1 → label 1, confidence 3/8).
* **Tie** (equal top counts): the label of the tied chain with the highest mean token log-probability wins (the
  chain the model itself found most likely); when log-probabilities are missing or equal, the earliest chain's
  label wins. ``tie`` is recorded so ties can be counted.
* **No chain parsed**: no label (a parse failure, scored as wrong like any other) and confidence 0.
* The **representative** chain (whose thought the record shows) is the winning-label chain with the highest
  mean log-probability, the earliest on equal or missing values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Vote:
    """The outcome of one row's vote; ``label is None`` only when no chain parsed."""

    label: int | None
    confidence: float
    counts: dict[int, int]
    representative: int | None
    tie: bool


def majority_vote(labels: Sequence[int | None], mean_logprobs: Sequence[float | None] | None = None) -> Vote:
    """Vote over ``labels`` (None = that chain did not parse); ``mean_logprobs[i]`` ranks chain i for ties."""
    if not labels:
        raise ValueError("majority_vote needs at least one chain")
    if mean_logprobs is not None and len(mean_logprobs) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(mean_logprobs)} log-probabilities")
    counts = Counter(label for label in labels if label is not None)
    if not counts:
        return Vote(None, 0.0, {}, None, False)
    top = max(counts.values())
    tied = {label for label, n in counts.items() if n == top}
    scores = mean_logprobs if mean_logprobs is not None else [None] * len(labels)

    def best_chain(allowed: set[int]) -> int:
        """Highest log-probability among chains voting for ``allowed``; earliest first on equal/missing values."""
        chains = [i for i, label in enumerate(labels) if label in allowed]
        return max(chains, key=lambda i: (float("-inf") if scores[i] is None else scores[i], -i))

    label = labels[best_chain(tied)]
    return Vote(label, top / len(labels), dict(sorted(counts.items())), best_chain({label}), len(tied) > 1)
