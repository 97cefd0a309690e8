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
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from nlicot import prompt
from nlicot.atomic import atomic_dir
from nlicot.corpus import LABEL_ONLY, CorpusError, load_rows, source_fingerprint
from nlicot.hub import cache_root, load_tokenizer
from nlicot.packing import Example, PackBatchSampler, collate_packs, pack_examples

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CACHE_VERSION = 4  # 4: label-only rows (stats "thoughts", dropped "label_only" / "with_thought")
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

    def prompt_row(self, r: int) -> dict[str, Any]:
        """Training row ``r`` as the prompt to sample from (unpacked rows only: its one example, without the answer)."""
        row = self.examples[self.packs[r][0]]
        return {k: row[k] for k in ("id", "premise", "hypothesis", "label", "prompt_ids")}

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


#: Which rows of a split a recipe uses (``rows`` of :func:`build_split`): SFT trains on rows with a thought only.
ROW_KINDS = ("with_thought", "label_only", "all")


def thought_subset(rows: list[dict[str, Any]], fraction: float, seed: int) -> set[str]:
    """Ids of the rows that keep their thought when only ``fraction`` of them may (``data.thought_fraction``).

    Rows are ranked by SHA-256 of (seed, id) and the first round(fraction × n) kept: the choice depends on the
    ids and the seed only (not the file order), and a smaller fraction's rows are a subset of a larger one's.
    """
    ids = sorted((r["id"] for r in rows if r["thought_process"] is not None),
                 key=lambda i: hashlib.sha256(f"{seed}\n{i}".encode()).digest())
    return set(ids[: round(fraction * len(ids))])


def build_split(
    source: str,
    split: str,
    tokenizer,
    max_length: int,
    packing: bool,
    on_overlength: str,
    columns: dict[str, str] | None,
    rows: str = "with_thought",
    thought_fraction: float = 1.0,
    thought_seed: int = 0,
) -> TokenizedSplit:
    """Read, validate, tokenize, filter and pack one split (no cache here: see :func:`load_split`).

    ``rows`` picks the rows kept (:data:`ROW_KINDS`); the others are dropped and counted. Before that, all but
    ``thought_fraction`` of the rows with a thought lose it and become label-only (:func:`thought_subset`).
    """
    import datasets

    read = load_rows(source, split=_HF_SPLIT[split], columns=columns, label_only=True)
    if thought_fraction < 1:
        keep_thought = thought_subset(read, thought_fraction, thought_seed)
        read = [r if r["id"] in keep_thought or r["thought_process"] is None else
                {**r, "thought_process": None, "source": LABEL_ONLY} for r in read]
    has_thought = [r["thought_process"] is not None for r in read]
    thoughts = {"with_thought": sum(has_thought), "label_only": len(read) - sum(has_thought)}
    wanted = {"with_thought": (True,), "label_only": (False,), "all": (True, False)}[rows]
    rows = [r for r, t in zip(read, has_thought, strict=True) if t in wanted]
    if not rows:
        raise CorpusError(f"{source}: no {'rows with a thought_process' if wanted == (True,) else 'label-only rows'} "
                          f"(of {len(read)} read: {thoughts})")
    prompts = prompt.encode_prompts(tokenizer, [r["premise"] for r in rows], [r["hypothesis"] for r in rows])
    paid = [i for i, r in enumerate(rows) if r["thought_process"] is not None]
    encoded = prompt.encode_answers(tokenizer, [rows[i]["thought_process"] for i in paid],
                                    [rows[i]["label"] for i in paid]) if paid else []
    answers: list[list[int]] = [[] for _ in rows]  # a label-only row has no SFT target
    for i, a in zip(paid, encoded, strict=True):
        answers[i] = a
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
        "rows_read": len(read),
        "thoughts": thoughts,
        "dropped": {"over_max_length": int(len(too_long)),
                    **{kind: n for kind, n in thoughts.items() if (kind == "with_thought") not in wanted}},
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


class RowDataset(torch.utils.data.Dataset):
    """Indexed by training row (from :class:`PackBatchSampler`); ``read(row)`` is what a batch holds of it: the
    examples packed into it (:meth:`TokenizedSplit.row`) or, for GRPO, its prompt (:meth:`TokenizedSplit.prompt_row`)."""

    def __init__(self, read: Callable[[int], Any], rows: int) -> None:
        self.read, self.rows = read, rows

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, row: int) -> Any:
        return self.read(row)


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
        thought_fraction: float = 1.0,
        thought_seed: int = 0,
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
            thought_fraction: share of the train split's rows with a thought that keep it; the rest become
                label-only rows (as if no thought had been paid for), which SFT never trains on and GRPO can use
                (``GRPODataModule``'s ``prompts``). A seeded choice by row id (``thought_seed``): 0.1 and 0.25 of the
                same corpus are nested, and val / test keep every thought.
            thought_seed: seed of that choice.
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

    def _settings(self, split: str) -> dict[str, Any]:
        """What :func:`build_split` needs besides the source (and what the split's cache is keyed by)."""
        h = self.hparams
        if not 0 <= h.thought_fraction <= 1:
            raise CorpusError(f"data.thought_fraction={h.thought_fraction} must be in [0, 1]")
        fraction = dict(thought_fraction=h.thought_fraction, thought_seed=h.thought_seed) if split == "train" else {}
        return dict(max_length=h.max_length, packing=h.packing, on_overlength=h.on_overlength, columns=h.columns,
                    rows=self.row_kind(split), **fraction)

    def row_kind(self, split: str) -> str:
        """Which rows the recipe uses (:data:`ROW_KINDS`): SFT's targets need a thought, on every split."""
        return "with_thought"

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
            load_split(source, split, self.tokenizer, self._settings(split))

    def setup(self, stage: str | None = None) -> None:
        """Load this stage's splits (from the cache :meth:`prepare_data` wrote; built here when called alone)."""
        if stage == "predict":
            self._setup_predict()
        for split, source in self._sources(stage).items():
            if split not in self.splits:
                self.splits[split] = load_split(source, split, self.tokenizer, self._settings(split), self.hparams.cache)
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
            "%s: %d examples (%d entailment / %d not) of %d read (%d with a thought, %d label-only; dropped: %s), "
            "%d rows, packing %.1f %%, tokens per example median %.0f max %.0f",
            split, s["examples"], s["labels"]["entailment"], s["labels"]["no_entailment"], s["rows_read"],
            s["thoughts"]["with_thought"], s["thoughts"]["label_only"], s["dropped"], s["rows"],
            100 * s["packing_efficiency"], tok["median"], tok["max"],
        )

    def loader(self, split: str, train: bool, dataset: torch.utils.data.Dataset | None = None,
               collate_fn: Callable[[list[Any]], Any] | None = None) -> StatefulDataLoader:
        """A split's loader: the resumable, rank-sharded row sampler over ``dataset`` (default: its packed rows,
        collated into isolated packed batches)."""
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
            accumulate=trainer.accumulate_grad_batches if trainer and train else 1,  # the order is per optimizer step
        )
        if train and trainer:
            sampler.progress = lambda: (trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        if train:
            self._train_sampler = sampler
            if self._resume_position is not None:
                sampler.load_state_dict(self._resume_position)
                self._resume_position = None
        if dataset is None:
            dataset = RowDataset(data.row, len(data.packs))
            collate_fn = partial(collate_packs, pad_id=self.tokenizer.pad_token_id,
                                 pad_to_multiple_of=self.hparams.pad_to_multiple_of)
        return StatefulDataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_fn,
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
        return self.loader("train", train=True)

    def val_dataloader(self) -> StatefulDataLoader | list:
        return self.loader("val", train=False) if "val" in self.splits else []

    def test_dataloader(self) -> StatefulDataLoader:
        return self.loader("test", train=False)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-split statistics (counts, label balance, token quantiles, drops, packing efficiency)."""
        return {split: data.stats for split, data in self.splits.items()}
