"""Generation-based evaluation: prompts → greedy CoT → parsed labels → records, NLI metrics, files, TensorBoard.

Used by ``predict`` (every input row, written to ``predictions.jsonl`` + ``metrics.json`` + figures) and by
``validate`` / ``test`` / end-of-validation in ``fit`` when ``model.generation_eval`` asks for it
(``val/accuracy``, ``val/f1``, ``val/parse_rate``, … and a few sample thoughts as TensorBoard text).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from nlicot.atomic import atomic_write
from nlicot.generation import Generated
from nlicot.metrics import (
    NLIMetrics,
    confusion_matrix_figure,
    metrics_to_json,
    scalar_metrics,
    thought_length_figure,
    thought_token_counts,
    write_figures,
    write_metrics_json,
)
from nlicot.parsing import extract_prediction


def records(
    tokenizer, rows: Sequence[dict[str, Any]], generated: Sequence[Generated]
) -> list[dict[str, Any]]:
    """One output record per row: the input, the parsed prediction and the raw text (for inspection)."""
    parsed = [extract_prediction(g.text) for g in generated]
    tokens = thought_token_counts(tokenizer, [p.thought for p in parsed])
    return [
        {
            "id": row["id"],
            "premise": row.get("premise"),
            "hypothesis": row.get("hypothesis"),
            "label": row.get("label"),
            "predicted_label": p.label,
            "thought_process": p.thought,
            "parse_ok": p.label is not None,
            "thought_tokens": n,
            "generated_tokens": g.num_tokens,
            "finish_reason": g.finish_reason,
            "raw": g.text,
        }
        for row, g, p, n in zip(rows, generated, parsed, tokens, strict=True)
    ]


def update_metrics(metric: NLIMetrics, recs: Sequence[dict[str, Any]]) -> None:
    """Add the labelled records (rows without a gold label are predictions only)."""
    known = [r for r in recs if r["label"] is not None]
    if known:
        metric.update([r["predicted_label"] for r in known], [r["label"] for r in known],
                      [r["thought_tokens"] for r in known])


def log_metrics(module: L.LightningModule, stage: str, result: dict[str, torch.Tensor],
                samples: Sequence[dict[str, Any]]) -> None:
    """``{stage}/accuracy`` etc. through Lightning; figures and sample thoughts straight to TensorBoard."""
    module.log_dict({f"{stage}/{k}": v for k, v in scalar_metrics(result).items()}, sync_dist=False)
    experiment = getattr(module.logger, "experiment", None)
    if module.trainer.is_global_zero and hasattr(experiment, "add_text"):
        step = module.global_step
        experiment.add_figure(f"{stage}/confusion_matrix", confusion_matrix_figure(result), step)
        experiment.add_figure(f"{stage}/accuracy_by_thought_length", thought_length_figure(result), step)
        text = "\n\n".join(
            f"**{r['id']}** (gold {r['label']}, predicted {r['predicted_label']})  \n"
            f"P: {r['premise'] or ''}  \nH: {r['hypothesis'] or ''}  \n`{r['raw']}`"
            for r in samples
        )
        experiment.add_text(f"{stage}/samples", text, step)


class PredictionWriter(L.Callback):
    """Collects ``predict`` outputs and writes them in input order, atomically, with metrics where labels exist.

    Files in ``output_dir``: ``predictions.jsonl``, and when the inputs carry labels ``metrics.json``,
    ``confusion_matrix.png`` and ``accuracy_by_thought_length.png``.
    """

    def __init__(self, output_dir: str = "predictions") -> None:
        """
        Args:
            output_dir: folder for predictions.jsonl, metrics.json and the figures.
        """
        self.output_dir = output_dir
        self._records: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._records = []

    def on_predict_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        self._records.extend(outputs)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gathered: list[Any] = [self._records]
        if trainer.world_size > 1:
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, self._records)
        if not trainer.is_global_zero:
            return
        recs = sorted((r for part in gathered for r in part), key=lambda r: r.pop("index"))
        out = Path(self.output_dir)
        atomic_write(out / "predictions.jsonl",
                     lambda f: f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode()))
        metric = NLIMetrics()
        update_metrics(metric, recs)
        summary = f"{len(recs)} predictions → {out / 'predictions.jsonl'}"
        if metric.preds:
            result = metric.compute()
            write_metrics_json(out / "metrics.json", metrics_to_json(result))
            write_figures(result, out)
            scores = scalar_metrics(result)
            summary += (f"; accuracy {scores['accuracy']:.3f}, F1 {scores['f1']:.3f}, "
                        f"parse rate {scores['parse_rate']:.3f} → {out / 'metrics.json'}")
        print(summary)
