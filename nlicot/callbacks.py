"""What a training run does besides learning, one callback each, added by the CLI (nlicot/cli.py).

* :class:`GenerationEval`: after validation / test, generate for some rows and log NLI metrics (config key
  ``generation_eval.rows``);
* :class:`DataReport`: the data statistics beside the curves in TensorBoard;
* :class:`ThroughputLog`: ``train/tokens_per_sec`` and ``train/packing_efficiency`` every optimizer step;
* :class:`TrainingRNG`: the random streams of training, carried across everything else and saved for resume.

The modules (nlicot/lora.py and its recipes) know none of them; a plain ``Trainer`` without them still trains
correctly. The callbacks use the modules' public API only (``predict_records``, ``throughput_counts``).
"""

from __future__ import annotations

import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch

from nlicot import predictions
from nlicot.metrics import NLIMetrics


class GenerationEval(L.Callback):
    """At the end of validation / test: generate answers for the split's first rows, score them, log them.

    Logs ``{val,test}/accuracy``, ``precision``, ``recall``, ``f1``, ``parse_rate``, a few sample thoughts and
    the figures. Each rank generates for its contiguous share of the rows; the generation settings are the
    model's (``model.generation``: ``max_new_tokens``, ``batch_size``, ``num_samples``, …).
    """

    def __init__(self, rows: int = 0) -> None:
        """
        Args:
            rows: how many rows of the validation / test split to generate for at the end of each validation and
                test (0 = off, -1 = all).
        """
        self.rows = rows

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluate(trainer, pl_module, "test")

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        splits = getattr(datamodule, "splits", {})
        if self.rows == 0 or trainer.sanity_checking or stage not in splits:
            return
        examples = splits[stage].examples
        rows = examples.select(range(len(examples) if self.rows < 0 else min(self.rows, len(examples))))
        rows = rows.shard(trainer.world_size, trainer.global_rank, contiguous=True).to_list()
        recs = pl_module.predict_records(rows)
        metric = NLIMetrics().to(pl_module.device)
        predictions.update_metrics(metric, recs)
        predictions.log_metrics(pl_module, stage, metric.compute(), recs[:3])


def stats_markdown(stats: dict[str, Any]) -> str:
    """A split's statistics (``NLICoTDataModule.stats()``) as a small Markdown table (TensorBoard text)."""
    tok = stats["tokens"]
    lines = [
        f"**{stats['source']}**: {stats['examples']} examples of {stats['rows_read']} rows read "
        f"({stats['thoughts']['with_thought']} with a thought, {stats['thoughts']['label_only']} label-only); "
        f"dropped {stats['dropped']}; labels {stats['labels']}; "
        f"sources {stats['sources']}; {stats['rows']} training rows, packing efficiency "
        f"{100 * stats['packing_efficiency']:.1f} %",
        "",
        "| tokens | min | p25 | median | p75 | p95 | max | mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for part in ("prompt", "thought", "total"):
        q = tok[part]
        lines.append(f"| {part} | " + " | ".join(f"{q[k]:.0f}" for k in ("min", "p25", "median", "p75", "p95", "max", "mean")) + " |")
    return "\n".join(lines)


class DataReport(L.Callback):
    """At the start of ``fit``, rank 0 writes each split's report (counts, label balance, drops, packing) as
    ``data/<split>`` text and its prompt / thought / total token lengths as ``data/<split>/<part>_tokens``
    histograms, so the data a run was trained on sits beside its curves."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        splits = getattr(getattr(trainer, "datamodule", None), "splits", {})
        if not hasattr(experiment, "add_text") or not trainer.is_global_zero:
            return
        for split, data in splits.items():
            experiment.add_text(f"data/{split}", stats_markdown(data.stats), 0)
            for part in ("prompt", "thought", "total"):
                experiment.add_histogram(f"data/{split}/{part}_tokens", data.column(f"{part}_tokens"), 0)


class ThroughputLog(L.Callback):
    """Per optimizer step, summed over its micro-batches and all ranks: ``train/tokens_per_sec`` (real, non-pad
    tokens per wall-clock second since the previous step) and ``train/packing_efficiency`` (real tokens / slots
    of the padded batches), as the module counts them (``throughput_counts``: the packed collator's
    ``num_real_tokens``; none for GRPO's prompt rows, which then log no throughput)."""

    def __init__(self) -> None:
        self._real = self._slots = 0
        self._last: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._last is None:
            self._last = time.perf_counter()
        real, slots = pl_module.throughput_counts(batch)
        self._real += real
        self._slots += slots

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if not self._slots:  # no tokens counted: no throughput figure to report
            return
        counts = torch.tensor([float(self._real), float(self._slots)], device=pl_module.device)
        real, slots = trainer.strategy.reduce(counts, reduce_op="sum")
        self._real = self._slots = 0
        now = time.perf_counter()
        elapsed, self._last = max(now - (self._last or now), 1e-9), now
        pl_module.log_dict({"train/tokens_per_sec": real / elapsed, "train/packing_efficiency": real / slots.clamp(min=1)},
                           on_step=True, on_epoch=False)


class TrainingRNG(L.Callback):
    """Training's random streams (dropout, LoRA dropout; numpy / python for user code) carried from each training
    batch to the next, and saved in every checkpoint: a resumed run continues them exactly.

    Why carried, and not only captured at save time and restored at the next training batch: between two training
    batches other work draws from the same global generators — a validation run (its loader draws a base seed,
    sampling may draw more) and every new loader iterator, e.g. the next epoch's. A checkpoint is written at the end
    of a training batch, before that work, so a resume from it restored a state the unbroken run had moved past
    (measured on the demo, resuming at an epoch-end step: later losses off by up to 0.037 with validation
    in between, 0.055 without it; 0 with this callback — tests/test_training.py).
    Here every training batch starts from the state the previous training batch ended with, in the unbroken run
    and after a resume alike; whatever runs in between draws from the generators as before but never shifts
    training, which therefore also no longer depends on when validation runs. Forking the generators around
    validation alone would leave the next epoch's loader draw between save point and next batch.
    """

    def __init__(self) -> None:
        self._state: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._state is not None:
            _set_rng_state(self._state)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Runs before ModelCheckpoint's hook (Lightning moves checkpoint callbacks last): saves see this state.
        self._state = _get_rng_state()

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._state if self._state is not None else _get_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state = state_dict["rng"]


def _get_rng_state() -> dict[str, Any]:
    """Every random stream a training step draws from, as tensors and numbers (loads with ``weights_only``)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
