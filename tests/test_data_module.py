"""NLICoTDataModule: cached tokenization, over-length policy, statistics, and a loader that resumes mid-epoch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from nlicot.corpus import CorpusError
from nlicot.data import NLICoTDataModule


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NLICOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def module(repo, **kw) -> NLICoTDataModule:
    dm = NLICoTDataModule(train_path=str(repo / "data/demo/train.jsonl"), val_path=str(repo / "data/demo/val.jsonl"),
                          micro_batch_size=2, **kw)
    return dm


def test_cache_hit_and_invalidation(repo, cache, tokenizer, monkeypatch, tmp_path):
    import nlicot.data as data

    calls = []
    real = data.build_split
    monkeypatch.setattr(data, "build_split", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    monkeypatch.setattr(data, "load_tokenizer", lambda name: tokenizer)
    module(repo).setup("fit")
    assert calls == ["train", "val"]
    dm = module(repo)
    dm.setup("fit")
    assert calls == ["train", "val"]  # second run: straight from the cache
    assert len(dm.splits["train"].packs) > 0
    module(repo, max_length=256).setup("fit")
    assert calls[2:] == ["train", "val"]  # another max_length is another cache entry
    edited = tmp_path / "train.jsonl"
    edited.write_text((repo / "data/demo/train.jsonl").read_text().replace("step 1:", "step 1 :", 1))
    NLICoTDataModule(train_path=str(edited), micro_batch_size=2).setup("fit")
    assert calls[4:] == ["train"]  # edited content invalidates; no leftover temp folders either
    assert not [p for p in (cache / "data").iterdir() if p.name.startswith(".tmp")]
    assert not [p for p in (cache / "data").iterdir() if p.name.startswith(".")]


def test_cache_follows_a_resaved_datasets_folder(repo, cache, tokenizer, monkeypatch, tmp_path):
    """A saved `datasets` folder keeps its name when it is saved again: the cache key is its content."""
    import json
    import shutil

    import datasets

    import nlicot.data as data

    monkeypatch.setattr(data, "load_tokenizer", lambda name: tokenizer)
    rows = [json.loads(line) for line in (repo / "data/demo/train.jsonl").read_text().splitlines() if line.strip()]
    folder = tmp_path / "corpus_ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    first = NLICoTDataModule(train_path=str(folder), micro_batch_size=2)
    first.setup("fit")
    assert first.stats()["train"]["examples"] == len(rows)
    shutil.rmtree(folder)
    datasets.Dataset.from_list(rows[:50]).save_to_disk(str(folder))
    again = NLICoTDataModule(train_path=str(folder), micro_batch_size=2)
    again.setup("fit")
    assert again.stats()["train"]["examples"] == 50


def test_prepare_data_builds_once_and_setup_only_loads(repo, cache, tokenizer, monkeypatch):
    """Lightning runs prepare_data on local rank 0 only, then setup on every rank: with the splits built and cached
    in prepare_data, no rank's setup tokenizes or writes (no rename races), it memory-maps the cache."""
    import nlicot.data as data

    calls = []
    real = data.build_split
    monkeypatch.setattr(data, "build_split", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    monkeypatch.setattr(data, "load_tokenizer", lambda name: tokenizer)
    rank0 = module(repo)
    rank0.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.VALIDATING))
    rank0.prepare_data()
    assert calls == ["val"]  # only what the stage reads
    rank0.trainer.state.fn = TrainerFn.FITTING
    rank0.prepare_data()
    assert calls == ["val", "train"]  # val already cached
    folders = sorted(p.name for p in (cache / "data").iterdir())
    for rank in range(2):
        dm = module(repo)
        dm.setup("fit")
        assert sorted(dm.splits) == ["train", "val"] and len(dm.splits["train"].packs) > 0, rank
    assert calls == ["val", "train"]  # setup built nothing ...
    assert sorted(p.name for p in (cache / "data").iterdir()) == folders  # ... and wrote nothing


def test_over_length_dropped_and_counted_or_refused(repo, cache):
    dm = module(repo, max_length=160)
    dm.setup("fit")
    stats = dm.stats()["train"]
    assert stats["dropped"]["over_max_length"] > 0
    assert stats["examples"] + stats["dropped"]["over_max_length"] == 120
    assert max(len(dm.splits["train"].row(r)) for r in range(len(dm.splits["train"].packs))) == 1  # no room to pack
    with pytest.raises(CorpusError, match=r"exceed data.max_length=160 tokens: .*train.jsonl:\d+ \(id demo-train"):
        module(repo, max_length=160, on_overlength="error").setup("fit")


def test_stats_report(repo, cache):
    dm = module(repo)
    dm.setup("fit")
    s = dm.stats()["train"]
    assert s["labels"] == {"entailment": 60, "no_entailment": 60}
    assert set(s["sources"]) == {"initial", "reflected"}
    assert s["tokens"]["total"]["max"] <= 512 and s["tokens"]["thought"]["median"] > 30
    assert 0.9 <= s["packing_efficiency"] <= 1.0


def fake_trainer(accumulate=2, epoch=0, processed=0):
    """What the data module reads from a Trainer: accumulation, ranks, and Lightning's progress counters."""
    batch_progress = SimpleNamespace(current=SimpleNamespace(processed=processed))
    return SimpleNamespace(accumulate_grad_batches=accumulate, world_size=1, global_rank=0, current_epoch=epoch,
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=batch_progress)))


def test_loader_resumes_mid_epoch_exactly(repo, cache):
    """Resume position = batches the training consumed (Lightning's counter), not batches the sampler yielded:
    with prefetching workers the sampler is ahead of training when a checkpoint is taken."""
    dm = module(repo)
    dm.setup("fit")
    dm.trainer = fake_trainer(epoch=3)
    full = [b["input_ids"] for b in dm.train_dataloader()]
    loader = dm.train_dataloader()
    it = iter(loader)
    head = [next(it)["input_ids"] for _ in range(7)]  # 7 yielded ...
    dm.trainer.fit_loop.epoch_loop.batch_progress.current.processed = 6  # ... 6 trained on
    state = loader.state_dict()
    fresh = dm.train_dataloader()
    fresh.load_state_dict(state)
    tail = [b["input_ids"] for b in fresh]
    assert len(tail) == len(full) - 6
    assert all(torch.equal(a, b) for a, b in zip(head[:6] + tail, full))
    dm.trainer.current_epoch = 4  # the next epoch starts from its beginning, in a new order
    nxt = [b["input_ids"] for b in fresh]
    assert len(nxt) == len(full) and not all(torch.equal(a, b) for a, b in zip(nxt, full))


def test_batches_carry_isolation_and_token_counts(repo, cache):
    dm = module(repo)
    dm.setup("fit")
    dm.trainer = fake_trainer()
    batches = list(dm.train_dataloader())
    first = batches[0]
    assert {"input_ids", "labels", "position_ids", "segment_ids", "num_real_tokens"} <= set(first)
    assert "window_tokens" not in first  # the model counts an optimizer step's tokens itself
    assert int(first["segment_ids"].max()) >= 1  # rows really hold several examples


def test_cache_survives_two_ranks_finishing_the_same_split_together(repo, cache, tokenizer, monkeypatch):
    """DDP ranks tokenize the same split at once: the other rank's rename may land between this rank's check and
    its own rename; a complete folder already there is the same content, not an error."""
    import os

    import nlicot.data as data

    settings = dict(max_length=512, packing=True, on_overlength="drop", columns=None)
    source = str(repo / "data/demo/val.jsonl")
    real_replace, raced = os.rename, []

    def other_rank_renames_first(src, dst):
        if not raced:
            raced.append(dst)
            data.load_split(source, "val", tokenizer, settings)
        return real_replace(src, dst)

    import nlicot.atomic as atomic

    monkeypatch.setattr(atomic.os, "rename", other_rank_renames_first)
    split = data.load_split(source, "val", tokenizer, settings)
    assert raced and len(split.packs) == 9
    assert [p.name for p in cache.joinpath("data").iterdir()] == [raced[0].name]  # one folder, no temp left
