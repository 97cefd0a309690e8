"""Prediction records: prompts → CoT → parsed labels → records, their NLI metrics, files and TensorBoard entries.

Records come from ``LoRAModule.predict_records`` (nlicot/lora.py). ``predict`` writes every input row's record
(:class:`PredictionWriter`: ``predictions.jsonl`` + ``metrics.json`` + figures); the generation evaluation at the
end of validation / test (``GenerationEval`` in nlicot/callbacks.py, config key ``generation_eval.rows``) logs
their metrics (``val/accuracy``, ``val/f1``, ``val/parse_rate``, … and a few sample thoughts as TensorBoard text).

A record is one greedy chain (``model.generation.num_samples: 1``) or a self-consistency vote over k sampled
chains: then ``predicted_label`` is the vote, ``confidence`` the agreement, ``votes`` the counts, ``chains`` every
chain (thought, label, parse flag, mean log-probability, raw text), ``greedy`` the greedy reference chain when one
was decoded (``model.generation.greedy_reference``), and the top-level thought / raw text are the representative
chain's (``representative_chain``, see ``nlicot/voting.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from nlicot.atomic import atomic_write
from nlicot.generation import Chains, Generated
from nlicot.metrics import (
    NLIMetrics,
    all_figures,
    metrics_to_json,
    scalar_metrics,
    thought_token_counts,
    write_figures,
    write_metrics_json,
)
from nlicot.parsing import extract_prediction
from nlicot.voting import majority_vote


def chain_fields(tokenizer, generated: Sequence[Generated]) -> list[dict[str, Any]]:
    """What one generated chain gives: parsed label and thought, parse flag, lengths, how it ended, raw text."""
    parsed = [extract_prediction(g.text) for g in generated]
    tokens = thought_token_counts(tokenizer, [p.thought for p in parsed])
    fields = []
    for g, p, n in zip(generated, parsed, tokens, strict=True):
        chain = {"predicted_label": p.label, "thought_process": p.thought, "parse_ok": p.label is not None,
                 "thought_tokens": n, "generated_tokens": g.num_tokens, "finish_reason": g.finish_reason}  # fmt: skip
        if g.mean_logprob is not None:
            chain["mean_logprob"] = g.mean_logprob
        fields.append(chain | {"raw": g.text})
    return fields


def records(
    tokenizer, rows: Sequence[dict[str, Any]], generated: Sequence[Generated] | Sequence[Chains]
) -> list[dict[str, Any]]:
    """One output record per row: the input, the parsed prediction and the raw text (for inspection)."""
    if len(generated) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(generated)} generations")
    inputs = [{"id": row["id"], "premise": row.get("premise"), "hypothesis": row.get("hypothesis"),
               "label": row.get("label")} for row in rows]  # fmt: skip
    if not generated or isinstance(generated[0], Generated):
        return [head | chain for head, chain in zip(inputs, chain_fields(tokenizer, generated))]
    out = []
    for head, chains in zip(inputs, generated):
        k = len(chains.samples)
        fields = chain_fields(tokenizer, [*chains.samples, *([chains.greedy] if chains.greedy is not None else [])])
        out.append(head | vote_record(fields[:k], fields[k] if chains.greedy is not None else None))
    return out


def vote_record(samples: list[dict[str, Any]], greedy: dict[str, Any] | None) -> dict[str, Any]:
    """A row's vote over its sampled chains (:func:`chain_fields`), shown through its representative chain."""
    vote = majority_vote([c["predicted_label"] for c in samples], [c.get("mean_logprob") for c in samples])
    shown = vote.representative if vote.representative is not None else 0  # nothing parsed: show chain 0
    return {k: v for k, v in samples[shown].items() if k != "mean_logprob"} | {
        "predicted_label": vote.label,
        "parse_ok": vote.label is not None,
        "confidence": vote.confidence,
        "votes": {"0": vote.counts.get(0, 0), "1": vote.counts.get(1, 0),
                  "unparsed": sum(not c["parse_ok"] for c in samples)},
        "tie": vote.tie,
        "representative_chain": shown,
        "chains": samples,
        "greedy": greedy,
    }  # fmt: skip


def update_metrics(metric: NLIMetrics, recs: Sequence[dict[str, Any]]) -> None:
    """Add the labelled records (rows without a gold label are predictions only); votes add their extras."""
    known = [r for r in recs if r["label"] is not None]
    if not known:
        return
    vote: dict[str, Any] = {}
    if "chains" in known[0]:
        vote["confidence"] = [r["confidence"] for r in known]
        vote["chain_accuracy"] = [sum(c["predicted_label"] == r["label"] for c in r["chains"]) / len(r["chains"])
                                  for r in known]  # fmt: skip
        if known[0]["greedy"] is not None:
            vote["greedy"] = [r["greedy"]["predicted_label"] for r in known]
    metric.update([r["predicted_label"] for r in known], [r["label"] for r in known],
                  [r["thought_tokens"] for r in known], **vote)


def log_metrics(module: L.LightningModule, stage: str, result: dict[str, torch.Tensor],
                samples: Sequence[dict[str, Any]]) -> None:
    """``{stage}/accuracy`` etc. through Lightning; figures and sample thoughts straight to TensorBoard."""
    module.log_dict({f"{stage}/{k}": v for k, v in scalar_metrics(result).items()}, sync_dist=False)
    experiment = getattr(module.logger, "experiment", None)
    if module.trainer.is_global_zero and hasattr(experiment, "add_text"):
        step = module.global_step
        for name, figure in all_figures(result).items():
            experiment.add_figure(f"{stage}/{name}", figure, step)
        text = "\n\n".join(
            f"**{r['id']}** (gold {r['label']}, predicted {r['predicted_label']}{_agreement(r)})  \n"
            f"P: {r['premise'] or ''}  \nH: {r['hypothesis'] or ''}  \n`{r['raw']}`"
            for r in samples
        )
        experiment.add_text(f"{stage}/samples", text, step)


def _agreement(rec: dict[str, Any]) -> str:
    return f", agreement {rec['confidence']:.2f}" if "confidence" in rec else ""


class PredictionWriter(L.Callback):
    """Collects ``predict`` outputs and writes them in input order, atomically, with metrics where labels exist.

    Files in ``output_dir``: ``predictions.jsonl``, and when the inputs carry labels ``metrics.json``,
    ``confusion_matrix.png`` and ``accuracy_by_thought_length.png``; with k > 1 chains per row also
    ``reliability_diagram.png`` and ``accuracy_vs_coverage.png``.
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
                        f"parse rate {scores['parse_rate']:.3f}")
            if "ece" in scores:
                greedy = "" if scores["greedy_accuracy"] != scores["greedy_accuracy"] else (
                    f", greedy accuracy {scores['greedy_accuracy']:.3f}")
                summary += (f" (vote of {len(recs[0]['chains'])} chains{greedy}, mean chain accuracy "
                            f"{scores['chain_accuracy']:.3f}, ECE {scores['ece']:.3f})")
            summary += f" → {out / 'metrics.json'}"
        print(summary)
