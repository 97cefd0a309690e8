"""NLI metrics over generated answers: torchmetrics scores, accuracy by thought length, figures, ``metrics.json``.

How parse failures are scored (``pred is None``): they are **wrong**, never dropped, so a model cannot look better
by writing less parseable JSON. For the label-based scores a failure is replaced by the wrong class, ``1 - gold``:
on a gold-entailment row it counts as a false negative, on a gold-no-entailment row as a false positive. Accuracy,
precision, recall, F1 (entailment = positive class), macro F1 and the confusion matrix all see that substitution.
Failures are also reported on their own: ``parse_rate``, ``parse_failures``, ``parse_failures_by_gold`` and
``parsed_accuracy`` (accuracy over the parsed rows only).

Self-consistency rows (k sampled chains, majority vote, see ``nlicot/voting.py``) add, per row, the vote's
confidence (agreement), the share of chains that were right and the greedy chain's label when one was decoded.
Then ``accuracy`` is the **vote**'s accuracy and :meth:`NLIMetrics.compute` also gives ``greedy_accuracy`` (the
separate greedy chain, NaN when none was decoded), ``chain_accuracy`` (mean accuracy of a single sampled chain),
``ece`` (expected calibration error of the confidence, 10 equal-width bins, torchmetrics
``binary_calibration_error`` on (confidence, vote correct)), ``mean_confidence``, and selective prediction:
``accuracy_at_coverage_50`` / ``_80`` = accuracy on the 50 % / 80 % most confident rows. Rows of equal confidence
are taken as a block in expectation (fractional share of the tied group at its mean accuracy), so the figure does
not depend on row order.
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
    binary_calibration_error,
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
#: Extra single numbers when the rows come from a self-consistency vote.
VOTE_SCALAR_KEYS = ("greedy_accuracy", "chain_accuracy", "ece", "mean_confidence", "accuracy_at_coverage_50",
                    "accuracy_at_coverage_80")  # fmt: skip
CALIBRATION_BINS = 10
COVERAGES = {"accuracy_at_coverage_50": 0.5, "accuracy_at_coverage_80": 0.8}
FAILED = -1
NO_GREEDY = -2


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
        self.add_state("confidence", default=[], dist_reduce_fx="cat")
        self.add_state("chain_accuracy", default=[], dist_reduce_fx="cat")
        self.add_state("greedy", default=[], dist_reduce_fx="cat")

    def update(
        self,
        preds: Sequence[int | None],
        target: Sequence[int],
        thought_tokens: Sequence[int],
        confidence: Sequence[float] | None = None,
        chain_accuracy: Sequence[float] | None = None,
        greedy: Sequence[int | None] | None = None,
    ) -> None:
        """Add rows; ``preds[i] is None`` marks a parse failure.

        Vote rows also pass ``confidence`` (agreement in [0, 1]) and ``chain_accuracy`` (share of the row's chains
        that were right), and ``greedy`` (the greedy chain's label, None = failure) when one was decoded.
        """
        n = len(preds)
        extra = {"confidence": confidence, "chain_accuracy": chain_accuracy, "greedy": greedy}
        lengths = [len(target), len(thought_tokens)] + [len(v) for v in extra.values() if v is not None]
        if any(m != n for m in lengths):
            raise ValueError(f"preds, target, thought_tokens (and vote fields) differ in length: {n}, {lengths}")
        if (confidence is None) != (chain_accuracy is None) or (greedy is not None and confidence is None):
            raise ValueError("vote rows need both confidence and chain_accuracy (greedy is optional)")
        checks = [("preds", preds, (0, 1, None)), ("target", target, (0, 1))]
        for name, values, allowed in checks + ([("greedy", greedy, (0, 1, None))] if greedy is not None else []):
            bad = [v for v in values if isinstance(v, bool) or v not in allowed]
            if bad:
                raise ValueError(f"{name} must hold only {allowed}, got {bad[0]!r}")
        if any(int(m) < 0 for m in thought_tokens):
            raise ValueError("thought_tokens must be >= 0")
        for name in ("confidence", "chain_accuracy"):
            if extra[name] is not None and any(not 0 <= float(v) <= 1 for v in extra[name]):
                raise ValueError(f"{name} must lie in [0, 1]")
        codes = [FAILED if p is None else p for p in preds]
        self.preds.append(torch.tensor(codes, dtype=torch.long, device=self.device))
        self.target.append(torch.tensor(list(target), dtype=torch.long, device=self.device))
        self.thought_tokens.append(torch.tensor(list(thought_tokens), dtype=torch.long, device=self.device))
        if confidence is not None:
            self.confidence.append(torch.tensor(list(confidence), dtype=torch.float, device=self.device))
            self.chain_accuracy.append(torch.tensor(list(chain_accuracy), dtype=torch.float, device=self.device))
            codes = [NO_GREEDY] * n if greedy is None else [FAILED if g is None else g for g in greedy]
            self.greedy.append(torch.tensor(codes, dtype=torch.long, device=self.device))

    def compute(self) -> dict[str, Tensor]:
        """Scalars (:data:`SCALAR_KEYS`), ``confusion_matrix`` (2×2, rows = gold, columns = predicted),
        ``parse_failures_by_gold`` (2,), ``bucket_accuracy`` (4,, NaN where empty) and ``bucket_count`` (4,);
        for vote rows also :data:`VOTE_SCALAR_KEYS`, ``reliability`` (:func:`reliability_bins`) and
        ``coverage_curve`` (:func:`coverage_curve`)."""
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
        vote: dict[str, Tensor] = {}
        if self.confidence:
            confidence = dim_zero_cat(self.confidence)
            if confidence.numel() != preds.numel():
                raise ValueError("some rows carry a vote confidence and some do not: evaluate them separately")
            vote = self._vote_scores(confidence, correct, target)
        return vote | {
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

    def _vote_scores(self, confidence: Tensor, correct: Tensor, target: Tensor) -> dict[str, Tensor]:
        greedy = dim_zero_cat(self.greedy)
        has_greedy = greedy != NO_GREEDY
        greedy_correct = (greedy == target)[has_greedy].float()  # a greedy parse failure (-1) is never gold
        scores = {
            "greedy_accuracy": greedy_correct.mean() if has_greedy.any() else torch.tensor(float("nan")),
            "chain_accuracy": dim_zero_cat(self.chain_accuracy).mean(),
            "ece": binary_calibration_error(confidence, correct.long(), n_bins=CALIBRATION_BINS, norm="l1"),
            "mean_confidence": confidence.mean(),
            "reliability": reliability_bins(confidence, correct),
            "coverage_curve": coverage_curve(confidence, correct),
        }
        for key, coverage in COVERAGES.items():
            scores[key] = torch.tensor(accuracy_at_coverage(confidence, correct, coverage))
        return scores


def reliability_bins(confidence: Tensor, correct: Tensor, n_bins: int = CALIBRATION_BINS) -> Tensor:
    """(n_bins, 3): row count, accuracy and mean confidence per equal-width bin (NaN where empty).

    Same bins as torchmetrics' calibration error, except that confidence 1.0 goes into the last bin
    ``[0.9, 1.0]`` here (torchmetrics keeps exact 1.0 apart); with k ≤ 10 chains each agreement level lands in
    its own bin either way, so the diagram and the ECE see the same groups.
    """
    edges = torch.linspace(0, 1, n_bins + 1, device=confidence.device)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins).float()
    acc = torch.bincount(index, weights=correct, minlength=n_bins) / count
    conf = torch.bincount(index, weights=confidence, minlength=n_bins) / count
    return torch.stack([count, acc, conf], dim=1)


def coverage_curve(confidence: Tensor, correct: Tensor) -> Tensor:
    """(levels, 2): coverage and accuracy when only rows with confidence ≥ each distinct level are answered."""
    levels, inverse = torch.unique(confidence, sorted=True, return_inverse=True)
    count = torch.bincount(inverse, minlength=len(levels)).flip(0).cumsum(0).float()
    right = torch.bincount(inverse, weights=correct, minlength=len(levels)).flip(0).cumsum(0)
    return torch.stack([count / confidence.numel(), right / count], dim=1)


def accuracy_at_coverage(confidence: Tensor, correct: Tensor, coverage: float) -> float:
    """Accuracy on the ``coverage`` share of rows with the highest confidence; ties shared out in expectation.

    Answering ``m = coverage · N`` rows takes every row above the tie level plus ``m − above`` rows of the tied
    group, each right with the group's accuracy: the expected accuracy under a random order within ties.
    """
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    wanted = coverage * confidence.numel()
    levels, inverse = torch.unique(confidence, sorted=True, return_inverse=True)
    taken = right = 0.0
    for level in reversed(range(len(levels))):
        group = inverse == level
        size, hits = float(group.sum()), float(correct[group].sum())
        share = min(size, wanted - taken)
        taken, right = taken + share, right + hits * share / size
        if taken >= wanted:
            break
    return right / taken


def thought_token_counts(tokenizer: Any, thoughts: Sequence[str | None]) -> list[int]:
    """Tokens per thought (no special tokens); a missing thought counts 0."""
    texts = [t or "" for t in thoughts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def scalar_metrics(result: dict[str, Tensor]) -> dict[str, float]:
    """The single-number results as floats, e.g. for ``self.log_dict({f"val/{k}": v ...})``."""
    return {k: float(result[k]) for k in (*SCALAR_KEYS, *VOTE_SCALAR_KEYS) if k in result}


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
    if "reliability" in result:
        width = 1 / len(result["reliability"])
        out["reliability"] = [
            {"confidence_bin": [round(i * width, 6), round((i + 1) * width, 6)], "count": int(n),
             "accuracy": _nan_to_none(float(acc)), "mean_confidence": _nan_to_none(float(conf))}
            for i, (n, acc, conf) in enumerate(result["reliability"].tolist())
        ]  # fmt: skip
        out["coverage_curve"] = [{"coverage": c, "accuracy": a} for c, a in result["coverage_curve"].tolist()]
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


def reliability_figure(result: dict[str, Tensor]):
    """Reliability diagram: accuracy per confidence bin against the diagonal, each bar labelled with its count."""
    from matplotlib.figure import Figure

    table = result["reliability"].cpu()
    width = 1 / len(table)
    fig = Figure(figsize=(5.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    lefts = [i * width for i in range(len(table))]
    bars = ax.bar(lefts, torch.nan_to_num(table[:, 1]).tolist(), width=width, align="edge", color="tab:blue",
                  edgecolor="white", label="accuracy")  # fmt: skip
    for bar, n in zip(bars, table[:, 0].tolist()):
        if n:
            ax.annotate(f"{int(n)}", (bar.get_x() + width / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("confidence (share of chains agreeing with the vote)")
    ax.set_ylabel("vote accuracy")
    ax.set_title(f"Reliability (ECE {float(result['ece']):.3f}; bar labels = rows)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def coverage_figure(result: dict[str, Tensor]):
    """Selective prediction: accuracy when only the most confident rows are answered, vs the share answered."""
    from matplotlib.figure import Figure

    curve = result["coverage_curve"].cpu()
    fig = Figure(figsize=(5.0, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0.0, *curve[:, 0].tolist()], [float(curve[0, 1]), *curve[:, 1].tolist()], marker="o", markersize=3,
            label="vote, most confident first")  # fmt: skip
    ax.axhline(float(result["accuracy"]), color="gray", linestyle="--", label="answer everything")
    for key, coverage in COVERAGES.items():
        ax.plot([coverage], [float(result[key])], "s", color="tab:red")
        ax.annotate(f"{float(result[key]):.2f}", (coverage, float(result[key])), textcoords="offset points",
                    xytext=(4, -12), fontsize=8)  # fmt: skip
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("coverage (share of rows answered)")
    ax.set_ylabel("accuracy on answered rows")
    ax.set_title("Accuracy vs coverage", fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def all_figures(result: dict[str, Tensor]) -> dict[str, Any]:
    """``{name: Figure}`` for every figure ``result`` supports (the vote figures only for vote rows)."""
    out = {"confusion_matrix": confusion_matrix_figure(result),
           "accuracy_by_thought_length": thought_length_figure(result)}  # fmt: skip
    if "reliability" in result:
        out["reliability_diagram"] = reliability_figure(result)
        out["accuracy_vs_coverage"] = coverage_figure(result)
    return out


def write_figures(result: dict[str, Tensor], out_dir: str | Path) -> dict[str, Any]:
    """Write ``<name>.png`` for each figure atomically; return ``{name: Figure}`` for TensorBoard's ``add_figure``."""
    figures = all_figures(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        atomic_write(out / f"{name}.png", lambda f, fig=fig: fig.savefig(f, format="png", dpi=120))
    return figures

