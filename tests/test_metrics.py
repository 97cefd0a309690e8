"""NLIMetrics against hand-computed numbers; metrics.json and figures."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nlicot.metrics import (
    BUCKET_NAMES,
    NLIMetrics,
    metrics_to_json,
    scalar_metrics,
    thought_token_counts,
    write_figures,
    write_metrics_json,
)

# (gold, predicted or None, thought tokens). Parse failures become the wrong class: rows 2, 3 -> FN, row 6 -> FP.
ROWS = [
    (1, 1, 0),  # TP
    (1, 1, 100),  # TP
    (1, None, 101),  # FN (failure)
    (1, None, 150),  # FN (failure)
    (0, 0, 200),  # TN
    (0, 0, 201),  # TN
    (0, None, 250),  # FP (failure)
    (0, 0, 300),  # TN
    (1, 1, 301),  # TP
    (1, 1, 999),  # TP
]
# TP 4, FN 2, FP 1, TN 3.  Class 0 as positive: TP 3, FP 2, FN 1.
EXPECTED = {
    "accuracy": 7 / 10,
    "precision": 4 / 5,
    "recall": 4 / 6,
    "f1": 2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6),  # 8/11
    "macro_f1": (8 / 11 + 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4)) / 2,  # (8/11 + 2/3) / 2
    "parse_rate": 7 / 10,
    "parsed_accuracy": 1.0,
    "parse_failures": 3,
    "num_examples": 10,
}


def metric_of(rows: list[tuple[int, int | None, int]], chunks: int = 1) -> NLIMetrics:
    metric = NLIMetrics()
    step = math.ceil(len(rows) / chunks)
    for i in range(0, len(rows), step):
        gold, pred, tokens = zip(*rows[i : i + step])
        metric.update(list(pred), list(gold), list(tokens))
    return metric


@pytest.mark.parametrize("chunks", [1, 3])
def test_scores_match_hand_computation(chunks: int) -> None:
    result = metric_of(ROWS, chunks).compute()
    assert scalar_metrics(result) == pytest.approx(EXPECTED)
    assert result["confusion_matrix"].tolist() == [[3, 1], [2, 4]]  # rows gold, columns predicted
    assert result["parse_failures_by_gold"].tolist() == [1, 2]
    assert result["bucket_count"].tolist() == [2, 3, 3, 2]
    assert result["bucket_accuracy"].tolist() == pytest.approx([1.0, 1 / 3, 2 / 3, 1.0])


def test_failures_are_always_wrong() -> None:
    result = metric_of([(1, None, 5), (0, None, 5)]).compute()
    assert float(result["accuracy"]) == 0.0
    assert float(result["parse_rate"]) == 0.0
    assert math.isnan(float(result["parsed_accuracy"]))
    assert result["confusion_matrix"].tolist() == [[0, 1], [1, 0]]


def test_empty_bucket_is_nan_and_null_in_json() -> None:
    result = metric_of([(1, 1, 10), (0, 1, 400)]).compute()
    assert result["bucket_count"].tolist() == [1, 0, 0, 1]
    assert result["bucket_accuracy"][0] == 1.0 and result["bucket_accuracy"][3] == 0.0
    assert torch.isnan(result["bucket_accuracy"][1:3]).all()
    buckets = metrics_to_json(result)["accuracy_by_thought_length"]
    assert buckets[1] == {"tokens": BUCKET_NAMES[1], "count": 0, "accuracy": None}


def test_reset_forgets_rows() -> None:
    metric = metric_of(ROWS)
    metric.reset()
    metric.update([0], [0], [1])
    assert int(metric.compute()["num_examples"]) == 1


@pytest.mark.parametrize(
    ("preds", "target", "tokens", "message"),
    [
        ([1], [1, 0], [1, 1], "differ in length"),
        ([2], [1], [1], "preds must hold"),
        ([True], [1], [1], "preds must hold"),
        ([1], [None], [1], "target must hold"),
        ([1], [1], [-1], "thought_tokens"),
    ],
)
def test_bad_rows_are_refused(preds: list, target: list, tokens: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NLIMetrics().update(preds, target, tokens)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_compute_without_rows_is_an_error() -> None:
    with pytest.raises(ValueError, match="before any row"):
        NLIMetrics().compute()


def test_metrics_json_is_written_atomically(tmp_path) -> None:
    payload = metrics_to_json(metric_of(ROWS).compute())
    path = write_metrics_json(tmp_path / "out" / "metrics.json", payload)
    loaded = json.loads(path.read_text())
    assert loaded["num_examples"] == 10 and loaded["parse_failures"] == 3
    assert loaded["accuracy"] == pytest.approx(0.7)
    assert loaded["confusion_matrix"]["counts"] == [[3, 1], [2, 4]]
    assert loaded["parse_failures_by_gold"] == {"no entailment": 1, "entailment": 2}
    # A payload that cannot be written leaves the previous file untouched and no temp file behind.
    with pytest.raises(ValueError):
        write_metrics_json(path, {"accuracy": float("nan")})
    assert json.loads(path.read_text()) == loaded
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_figures_are_pngs_and_figures(tmp_path) -> None:
    figures = write_figures(metric_of(ROWS).compute(), tmp_path)
    assert set(figures) == {"confusion_matrix", "accuracy_by_thought_length"}
    for name in figures:
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = sorted(t.get_text() for t in figures["confusion_matrix"].axes[0].texts)
    assert cells == ["1", "2", "3", "4"]
    bar_labels = [t.get_text() for t in figures["accuracy_by_thought_length"].axes[0].texts]
    assert bar_labels == ["n=2", "n=3", "n=3", "n=2"]


def test_thought_token_counts(tokenizer) -> None:
    counts = thought_token_counts(tokenizer, [None, "", "step 1: the cat sleeps."])
    assert counts[:2] == [0, 0]
    assert counts[2] == len(tokenizer("step 1: the cat sleeps.", add_special_tokens=False)["input_ids"]) > 3
    assert thought_token_counts(tokenizer, []) == []
