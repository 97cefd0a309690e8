"""NLICoTDataModule: corpus rows → tokenized, filtered, packed, cached splits → resumable loaders.

Order of work (each step needs the one before): in :meth:`NLICoTDataModule.prepare_data`, once per machine,
  rows (validated, file:line errors) → token ids via the one template (nlicot/prompt.py) → over-length filter
  (dropped and counted, or an error) → packs (best-fit decreasing) → cached with `datasets` under a key of
  (data content, tokenizer, template, max_length, packing); in :meth:`NLICoTDataModule.setup`, on every rank,
  the cache memory-mapped → loaders whose sampler shards by rank.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from nlicot import prompt
from nlicot.atomic import atomic_dir
from nlicot.corpus import CorpusError, load_rows, source_fingerprint
from nlicot.hub import cache_root, load_tokenizer
from nlicot.packing import Example, PackBatchSampler, collate_packs, pack_examples

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CACHE_VERSION = 3
_HF_SPLIT = {"train": "train", "val": "validation", "test": "test"}


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the full tokenizer definition, so a changed vocabulary or normaliser invalidates caches."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class TokenizedSplit:
    """One split after tokenization, filtering and packing; the arrays live in a memory-mapped Arrow table."""

    examples: Any  # datasets.Dataset: id, label, source, prompt_ids, answer_ids, thought_tokens
    packs: list[list[int]]  # example indices per training row
    stats: dict[str, Any]

    def row(self, r: int) -> list[Example]:
        rows = self.examples[self.packs[r]]
        return [Example(p, a) for p, a in zip(rows["prompt_ids"], rows["answer_ids"], strict=True)]

    def column(self, name: str) -> np.ndarray:
        """A whole numeric column straight from Arrow (row-by-row access costs ~1 s per 40k rows)."""
        return self.examples.data.column(name).to_numpy()

    def row_lengths(self) -> np.ndarray:
        """Tokens per row (what the sampler groups by)."""
        total = self.column("total_tokens")
        return np.array([total[p].sum() for p in self.packs])


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    q = np.percentile(values, [0, 25, 50, 75, 95, 100])
    return dict(zip(("min", "p25", "median", "p75", "p95", "max"), map(float, q), strict=True)) | {
        "mean": float(values.mean())
    }


def build_split(
    source: str,
    split: str,
    tokenizer,
    max_length: int,
    packing: bool,
    on_overlength: str,
    columns: dict[str, str] | None,
) -> TokenizedSplit:
    """Read, validate, tokenize, filter and pack one split (no cache here: see :func:`load_split`)."""
    import datasets

    rows = load_rows(source, split=_HF_SPLIT[split], columns=columns)
    prompts = prompt.encode_prompts(tokenizer, [r["premise"] for r in rows], [r["hypothesis"] for r in rows])
    answers = prompt.encode_answers(tokenizer, [r["thought_process"] for r in rows], [r["label"] for r in rows])
    # Thought length = answer length minus the JSON wrapper (17 tokens on 40k rows checked); a third tokenizer
    # pass over the thoughts would cost a third of a cold setup for one statistic.
    wrapper = len(prompt.encode_answers(tokenizer, [""], [0])[0])
    prompt_len = np.array([len(p) for p in prompts])
    answer_len = np.array([len(a) for a in answers])
    thought_len = np.maximum(answer_len - wrapper, 0)
    totals = prompt_len + answer_len
    too_long = np.flatnonzero(totals > max_length)
    if len(too_long) and on_overlength == "error":
        listed = ", ".join(f"{rows[i]['where']} (id {rows[i]['id']}, {totals[i]} tokens)" for i in too_long[:10])
        raise CorpusError(
            f"{len(too_long)} example(s) in {source} exceed data.max_length={max_length} tokens: {listed}. "
            "Set data.on_overlength=drop to skip them."
        )
    keep = np.flatnonzero(totals <= max_length)
    if len(keep) == 0:
        raise CorpusError(f"{source}: every example is longer than data.max_length={max_length}")
    kept = [rows[i] for i in keep]
    labels = [r["label"] for r in kept]
    sources = [r["source"] for r in kept]
    examples = datasets.Dataset.from_dict(
        {
            "id": [r["id"] for r in kept],
            "premise": [r["premise"] for r in kept],
            "hypothesis": [r["hypothesis"] for r in kept],
            "label": labels,
            "source": sources,
            "prompt_ids": [prompts[i] for i in keep],
            "answer_ids": [answers[i] for i in keep],
            "prompt_tokens": prompt_len[keep].tolist(),
            "answer_tokens": answer_len[keep].tolist(),
            "thought_tokens": thought_len[keep].tolist(),
            "total_tokens": totals[keep].tolist(),
        }
    )
    lengths = totals[keep]
    packs = pack_examples(lengths.tolist(), max_length) if packing else [[i] for i in range(len(keep))]
    stats = {
        "source": source,
        "examples": int(len(keep)),
        "rows_read": len(rows),
        "dropped": {"over_max_length": int(len(too_long))},
        "dropped_ids": [rows[i]["id"] for i in too_long[:50]],
        "labels": {"entailment": labels.count(1), "no_entailment": labels.count(0)},
        "sources": {s: int(n) for s, n in zip(*np.unique(sources, return_counts=True), strict=True)},
        "tokens": {
            "prompt": _quantiles(prompt_len[keep]),
            "thought": _quantiles(thought_len[keep]),
            "total": _quantiles(lengths),
        },
        "rows": len(packs),
        "packing_efficiency": float(lengths.sum() / (len(packs) * max_length)),
    }
    return TokenizedSplit(examples, packs, stats)


def load_split(source: str, split: str, tokenizer, settings: dict[str, Any], use_cache: bool = True) -> TokenizedSplit:
    """:func:`build_split` behind a content-addressed cache: unchanged data and settings load at once.

    The key covers the file's bytes, the tokenizer, the template text and every setting that changes the
    result; the folder is written to a temporary name and renamed, so a crash never leaves a half cache.
    """
    import datasets

    key_src = json.dumps(
        [CACHE_VERSION, source_fingerprint(source), tokenizer_fingerprint(tokenizer), prompt.template_fingerprint(tokenizer),
         split, settings], sort_keys=True, default=str,
    )
    folder = cache_root() / "data" / hashlib.sha256(key_src.encode()).hexdigest()[:24]
    if use_cache and (folder / "packs.json").is_file():
        meta = json.loads((folder / "packs.json").read_text())
        return TokenizedSplit(datasets.load_from_disk(str(folder / "examples")), meta["packs"], meta["stats"])
    result = build_split(source, split, tokenizer, **settings)
    if use_cache:
        with atomic_dir(folder) as tmp:  # DDP ranks (or two runs) building the same content: the first one's stays
            result.examples.save_to_disk(str(tmp / "examples"))
            (tmp / "packs.json").write_text(json.dumps({"packs": result.packs, "stats": result.stats}))
        result = TokenizedSplit(datasets.load_from_disk(str(folder / "examples")), result.packs, result.stats)
    return result


class _RowDataset(torch.utils.data.Dataset):
    """Indexed by row (from :class:`PackBatchSampler`); returns the examples packed into that row."""

    def __init__(self, split: TokenizedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.packs)

    def __getitem__(self, row: int) -> list[Example]:
        return self.split.row(row)


class NLICoTDataModule(L.LightningDataModule):
    """The NLI chain-of-thought corpus as packed, example-isolated, mid-epoch-resumable batches."""

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        tokenizer: str = "tiny",
        max_length: int = 512,
        packing: bool = True,
        micro_batch_size: int = 4,
        predict_batch_size: int = 32,
        group_by_length: bool = True,
        on_overlength: Literal["drop", "error"] = "drop",
        columns: dict[str, str] | None = None,
        pad_to_multiple_of: int = 8,
        num_workers: int = 0,
        seed: int = 42,
        cache: bool = True,
    ) -> None:
        """
        Args:
            train_path: corpus for fit: a .jsonl/.csv file, a saved `datasets` folder, or a dataset name
                (``name#split`` picks a split).
            val_path: corpus for validation (teacher-forced loss and token accuracy; generation metrics too
                when the model asks for them).
            test_path: corpus for ``test``.
            predict_path: premise/hypothesis rows (label optional) for ``predict``.
            tokenizer: tokenizer name or folder; linked to ``model.model_name_or_path`` by the CLI.
            max_length: tokens per packed row; no example is ever cut to fit it.
            packing: pack several examples per row (isolated by masks and positions); false = one per row.
            micro_batch_size: rows per micro-batch on each device.
            predict_batch_size: prompts generated together in ``predict`` (sorted by length to cut padding).
            group_by_length: batch rows of similar length together (order still shuffled) to cut padding.
            on_overlength: what to do with an example longer than max_length: drop it (counted and reported)
                or stop with an error naming it.
            columns: map our field names to your columns, e.g. ``{label: gold, thought_process: cot}``.
            pad_to_multiple_of: rows are padded to the batch's longest row rounded up to this.
            num_workers: loader worker processes.
            seed: data order seed; the order of epoch e depends on (seed, e) only.
            cache: cache tokenized and packed splits (keyed by content and settings).
        """
        super().__init__()
        self.save_hyperparameters()
        self.splits: dict[str, TokenizedSplit] = {}
        self._tokenizer = None
        self._train_sampler: PackBatchSampler | None = None
        self._resume_position: dict[str, int] | None = None
        self.predict_rows: list[dict[str, Any]] = []

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.hparams.tokenizer)
        return self._tokenizer

    def _settings(self) -> dict[str, Any]:
        h = self.hparams
        return dict(max_length=h.max_length, packing=h.packing, on_overlength=h.on_overlength, columns=h.columns)

    def _sources(self, stage: str | None) -> dict[str, str]:
        """The splits a stage reads, with their sources; one the stage cannot do without is an error if unset."""
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": []}.get(stage or "", SPLITS)
        sources = {}
        for split in wanted:
            source = getattr(self.hparams, f"{split}_path")
            if source is not None:
                sources[split] = source
            elif split == "train" or (split == "test" and stage == "test") or (split == "val" and stage == "validate"):
                raise CorpusError(f"data.{split}_path is not set; stage {stage!r} needs it")
        return sources

    def prepare_data(self) -> None:
        """Tokenize, pack and cache the splits this run needs, once per machine.

        Lightning calls this on local rank 0 only and holds the other ranks at a barrier until it returns, so
        DDP ranks never build (and rename into place) the same cache folder at once; every rank's :meth:`setup`
        then only memory-maps it. With ``cache=false`` there is nothing to share: each rank builds in ``setup``.
        """
        if not self.hparams.cache:
            return
        fn = self.trainer.state.fn if self.trainer is not None else None
        for split, source in self._sources(fn.value if fn else None).items():
            load_split(source, split, self.tokenizer, self._settings())

    def setup(self, stage: str | None = None) -> None:
        """Load this stage's splits (from the cache :meth:`prepare_data` wrote; built here when called alone)."""
        if stage == "predict":
            self._setup_predict()
        for split, source in self._sources(stage).items():
            if split not in self.splits:
                self.splits[split] = load_split(source, split, self.tokenizer, self._settings(), self.hparams.cache)
                self._report(split)

    def _setup_predict(self) -> None:
        """Premise/hypothesis rows (label, thought optional) with their prompt ids and input position."""
        source = self.hparams.predict_path
        if source is None:
            raise CorpusError("data.predict_path is not set; predict needs premise/hypothesis rows")
        rows = load_rows(source, split="test", columns=self.hparams.columns, require_thought=False, require_label=False)
        prompts = prompt.encode_prompts(self.tokenizer, [r["premise"] for r in rows], [r["hypothesis"] for r in rows])
        for i, (row, ids) in enumerate(zip(rows, prompts, strict=True)):
            row.update(index=i, prompt_ids=ids)
        self.predict_rows = rows

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        """Length-sorted batches (little left padding), sharded by rank; the writer restores input order."""
        rows = self.predict_rows
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["prompt_ids"]))
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            order = order[trainer.global_rank :: trainer.world_size]
        return torch.utils.data.DataLoader(rows, sampler=order, batch_size=self.hparams.predict_batch_size,
                                           collate_fn=list)

    def _report(self, split: str) -> None:
        s = self.splits[split].stats
        tok = s["tokens"]["total"]
        log.info(
            "%s: %d examples (%d entailment / %d not), %d dropped over max_length, %d rows, packing %.1f %%, "
            "tokens per example median %.0f max %.0f",
            split, s["examples"], s["labels"]["entailment"], s["labels"]["no_entailment"],
            s["dropped"]["over_max_length"], s["rows"], 100 * s["packing_efficiency"], tok["median"], tok["max"],
        )

    def _loader(self, split: str, train: bool) -> StatefulDataLoader:
        data = self.splits[split]
        trainer = self.trainer
        sampler = PackBatchSampler(
            data.row_lengths(),
            micro_batch_size=self.hparams.micro_batch_size,
            shuffle=train,
            group_by_length=self.hparams.group_by_length,
            seed=self.hparams.seed,
            world_size=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
        )
        if train and trainer:
            sampler.progress = lambda: (trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        if train:
            self._train_sampler = sampler
            if self._resume_position is not None:
                sampler.load_state_dict(self._resume_position)
                self._resume_position = None
        return StatefulDataLoader(
            _RowDataset(data),
            batch_sampler=sampler,
            collate_fn=partial(collate_packs, pad_id=self.tokenizer.pad_token_id,
                               pad_to_multiple_of=self.hparams.pad_to_multiple_of),
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def state_dict(self) -> dict[str, Any]:
        """The train position (epoch, micro-batches consumed), saved in every checkpoint.

        Why here and not only in the loader's state: Lightning 2.6 applies saved loader states only to a loader
        created after the loop state is restored, but the scheduler needs the loader earlier
        (``estimated_stepping_batches``), so the loader state would be silently dropped and the epoch replayed.
        The data module is restored before any loader exists; applying the same position twice is harmless.
        """
        return {"train_position": self._train_sampler.state_dict()} if self._train_sampler else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_position = state_dict.get("train_position")

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> StatefulDataLoader | list:
        return self._loader("val", train=False) if "val" in self.splits else []

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader("test", train=False)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-split statistics (counts, label balance, token quantiles, drops, packing efficiency)."""
        return {split: data.stats for split, data in self.splits.items()}
