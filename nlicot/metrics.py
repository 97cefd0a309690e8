"""NLI metrics over generated answers: torchmetrics scores, accuracy by thought length, figures, ``metrics.json``.

How parse failures are scored (``pred is None``): they are **wrong**, never dropped, so a model cannot look better
by writing less parseable JSON. For the label-based scores a failure is replaced by the wrong class, ``1 - gold``:
on a gold-entailment row it counts as a false negative, on a gold-no-entailment row as a false positive. Accuracy,
precision, recall, F1 (entailment = positive class), macro F1 and the confusion matrix all see that substitution.
Failures are also reported on their own: ``parse_rate``, ``parse_failures``, ``parse_failures_by_gold`` and
``parsed_accuracy`` (accuracy over the parsed rows only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_confusion_matrix,
    binary_f1_score,
    binary_precision,
    binary_recall,
    multiclass_f1_score,
)
from torchmetrics.utilities import dim_zero_cat

from nlicot.atomic import atomic_write, atomic_write_text

#: Thought-length buckets in tokens (inclusive upper bounds; the last is open), as the seed analysis used.
BUCKET_UPPER = (100, 200, 300)
BUCKET_NAMES = ("0-100", "101-200", "201-300", "301+")
CLASS_NAMES = ("no entailment", "entailment")
#: Keys of :meth:`NLIMetrics.compute` that are single numbers (what goes to ``self.log_dict`` as ``val/<key>``).
SCALAR_KEYS = ("accuracy", "precision", "recall", "f1", "macro_f1", "parse_rate", "parsed_accuracy",
               "parse_failures", "num_examples")  # fmt: skip
COUNT_KEYS = ("parse_failures", "num_examples")
FAILED = -1


class NLIMetrics(Metric):
    """Accumulates (predicted label or None, gold label, thought token count) rows; DDP-safe (states are gathered).

    Per-row states rather than running sums: evaluation sets are small, and every score, bucket and figure is
    then computed from the same rows.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("thought_tokens", default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[int | None], target: Sequence[int], thought_tokens: Sequence[int]) -> None:
        """Add rows; ``preds[i] is None`` marks a parse failure."""
        if not len(preds) == len(target) == len(thought_tokens):
            raise ValueError(
                f"preds, target and thought_tokens differ in length: {len(preds)}, {len(target)}, {len(thought_tokens)}"
            )
        for name, values, allowed in (("preds", preds, (0, 1, None)), ("target", target, (0, 1))):
            bad = [v for v in values if isinstance(v, bool) or v not in allowed]
            if bad:
                raise ValueError(f"{name} must hold only {allowed}, got {bad[0]!r}")
        if any(int(n) < 0 for n in thought_tokens):
            raise ValueError("thought_tokens must be >= 0")
        codes = [FAILED if p is None else p for p in preds]
        self.preds.append(torch.tensor(codes, dtype=torch.long, device=self.device))
        self.target.append(torch.tensor(list(target), dtype=torch.long, device=self.device))
        self.thought_tokens.append(torch.tensor(list(thought_tokens), dtype=torch.long, device=self.device))

    def compute(self) -> dict[str, Tensor]:
        """Scalars (:data:`SCALAR_KEYS`), ``confusion_matrix`` (2×2, rows = gold, columns = predicted),
        ``parse_failures_by_gold`` (2,), ``bucket_accuracy`` (4,, NaN where empty) and ``bucket_count`` (4,)."""
        if not self.preds:
            raise ValueError("NLIMetrics.compute() called before any row was added")
        preds, target, tokens = (dim_zero_cat(s) for s in (self.preds, self.target, self.thought_tokens))
        failed = preds == FAILED
        scored = torch.where(failed, 1 - target, preds)  # a failure is always the wrong class
        correct = (scored == target).float()
        parsed = ~failed
        buckets = torch.bucketize(tokens, torch.tensor(BUCKET_UPPER, device=tokens.device))
        bucket_count = torch.bincount(buckets, minlength=len(BUCKET_NAMES))
        bucket_correct = torch.bincount(buckets, weights=correct, minlength=len(BUCKET_NAMES))
        return {
            "accuracy": binary_accuracy(scored, target),
            "precision": binary_precision(scored, target),
            "recall": binary_recall(scored, target),
            "f1": binary_f1_score(scored, target),
            "macro_f1": multiclass_f1_score(scored, target, num_classes=2, average="macro"),
            "parse_rate": parsed.float().mean(),
            "parsed_accuracy": correct[parsed].mean() if parsed.any() else torch.tensor(float("nan")),
            "parse_failures": failed.sum(),
            "num_examples": torch.tensor(preds.numel()),
            "confusion_matrix": binary_confusion_matrix(scored, target),
            "parse_failures_by_gold": torch.bincount(target[failed], minlength=2),
            "bucket_accuracy": torch.where(bucket_count > 0, bucket_correct / bucket_count.clamp(min=1), float("nan")),
            "bucket_count": bucket_count,
        }


def thought_token_counts(tokenizer: Any, thoughts: Sequence[str | None]) -> list[int]:
    """Tokens per thought (no special tokens); a missing thought counts 0."""
    texts = [t or "" for t in thoughts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def scalar_metrics(result: dict[str, Tensor]) -> dict[str, float]:
    """The single-number results as floats, e.g. for ``self.log_dict({f"val/{k}": v ...})``."""
    return {k: float(result[k]) for k in SCALAR_KEYS}


def metrics_to_json(result: dict[str, Tensor]) -> dict[str, Any]:
    """A JSON-ready view of :meth:`NLIMetrics.compute` (NaN becomes ``null``)."""
    out: dict[str, Any] = {k: int(v) if k in COUNT_KEYS else _nan_to_none(v) for k, v in scalar_metrics(result).items()}
    out["confusion_matrix"] = {
        "labels": list(CLASS_NAMES),
        "rows": "gold",
        "columns": "predicted (parse failures as the wrong class)",
        "counts": result["confusion_matrix"].tolist(),
    }
    out["parse_failures_by_gold"] = dict(zip(CLASS_NAMES, result["parse_failures_by_gold"].tolist()))
    out["accuracy_by_thought_length"] = [
        {"tokens": name, "count": int(n), "accuracy": _nan_to_none(float(acc))}
        for name, n, acc in zip(BUCKET_NAMES, result["bucket_count"], result["bucket_accuracy"])
    ]
    return out


def _nan_to_none(x: float) -> float | None:
    return None if x != x else x  # NaN (no rows to score) is not valid JSON


def write_metrics_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as pretty JSON atomically: readers never see a half-written file."""
    text = json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def confusion_matrix_figure(result: dict[str, Tensor]):
    """Heat map of the 2×2 confusion matrix with counts in the cells."""
    from matplotlib.figure import Figure

    cm = result["confusion_matrix"].cpu()
    fig = Figure(figsize=(5.2, 4.6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues", vmin=0)
    for (i, j), n in ((ij, int(cm[ij])) for ij in ((0, 0), (0, 1), (1, 0), (1, 1))):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > cm.max() / 2 else "black")
    ax.set_xticks([0, 1], CLASS_NAMES)
    ax.set_yticks([0, 1], CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    failures = int(result["parse_failures"])
    ax.set_title(f"Confusion matrix\n({failures} parse failures counted as the wrong class)", fontsize=10)
    return fig


def thought_length_figure(result: dict[str, Tensor]):
    """Accuracy per thought-length bucket, each bar labelled with its row count."""
    from matplotlib.figure import Figure

    acc = result["bucket_accuracy"].cpu()
    counts = result["bucket_count"].cpu().tolist()
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    heights = torch.nan_to_num(acc, nan=0.0).tolist()
    bars = ax.bar(BUCKET_NAMES, heights, color="tab:blue")
    for bar, n in zip(bars, counts):
        ax.annotate(f"n={n}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("thought length (tokens)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy by thought length")
    return fig


def write_figures(result: dict[str, Tensor], out_dir: str | Path) -> dict[str, Any]:
    """Write ``<name>.png`` for each figure atomically; return ``{name: Figure}`` for TensorBoard's ``add_figure``."""
    figures = {"confusion_matrix": confusion_matrix_figure(result),
               "accuracy_by_thought_length": thought_length_figure(result)}  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        atomic_write(out / f"{name}.png", lambda f, fig=fig: fig.savefig(f, format="png", dpi=120))
    return figures

