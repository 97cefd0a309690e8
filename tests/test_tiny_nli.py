"""``tiny-nli`` (nlicot/offline/tiny_nli.py): the shipped weights rebuild the pretrained model exactly; model-name
errors of the offline bases are one ``error:`` line, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_unknown_tiny_name_is_one_error_line(repo, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nlicot", "fit", "--config", "configs/demo.yaml", "--model.model_name_or_path=tiny-xl",
         "--trainer.max_steps=1", f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
         f"--trainer.logger.init_args.save_dir={tmp_path}"],
        cwd=repo, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    assert "error: unknown model name 'tiny-xl'" in proc.stderr and "Traceback" not in proc.stderr


def test_pretraining_changes_only_the_body_and_the_used_rows_so_the_shipped_part_rebuilds_it_exactly(tokenizer):
    """The claim the shipped weights rest on: a pretrained model equals the seeded initial model plus
    ``trained_part`` (the embedding rows of unused tokens keep their initial values, their head rows stay 0)."""
    import dataclasses

    import torch

    from nlicot.offline import tiny_nli

    recipe = dataclasses.replace(tiny_nli.RECIPES["tiny-nli"], steps=3, texts=40, batch_size=4)
    initial = tiny_nli._initial_model(recipe)
    pretrained = tiny_nli._initial_model(recipe)
    tiny_nli.pretrain(pretrained, tokenizer, recipe, log_every=0)
    part = tiny_nli.trained_part(pretrained)
    _, used = tiny_nli._pretraining_batches(tokenizer, recipe)
    assert part["used_ids"].tolist() == used  # every used token has a head row, no other token has one
    rebuilt = tiny_nli._initial_model(recipe)
    tiny_nli._apply_trained(rebuilt, part)
    want, got, start = pretrained.state_dict(), rebuilt.state_dict(), initial.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want), [k for k in want if not torch.equal(want[k], got[k])]
    assert not torch.equal(want["model.layers.0.self_attn.q_proj.weight"], start["model.layers.0.self_attn.q_proj.weight"])


def test_shipped_tiny_nli_is_todays_recipe_and_is_used_without_pretraining(tmp_path, monkeypatch, tokenizer):
    from dataclasses import asdict

    from safetensors import safe_open

    from nlicot.offline import tiny_nli

    with safe_open(tiny_nli.weights_file("tiny-nli"), "pt") as f:
        assert json.loads(f.metadata()["recipe"]) == asdict(tiny_nli.RECIPES["tiny-nli"])  # else it would be ignored
        used = f.get_tensor("used_ids").tolist()
    _, text_ids = tiny_nli._pretraining_batches(tokenizer, tiny_nli.RECIPES["tiny-nli"])
    assert used == text_ids  # made from today's pretraining text

    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretrained although weights ship")

    monkeypatch.setattr(tiny_nli, "pretrain", no_pretraining)
    tiny_nli.build("tiny-nli", tmp_path)
    from transformers import MistralForCausalLM

    model = MistralForCausalLM.from_pretrained(tmp_path)
    assert model.lm_head.weight.abs().sum(-1).nonzero().flatten().tolist() == used


def test_weights_of_another_recipe_are_ignored_and_the_model_is_pretrained(tmp_path, monkeypatch, capsys):
    import dataclasses

    from nlicot.offline import tiny_nli

    changed = dataclasses.replace(tiny_nli.RECIPES["tiny-nli"], steps=2, texts=20, batch_size=2)
    monkeypatch.setitem(tiny_nli.RECIPES, "tiny-nli", changed)  # same version, so the same file name
    tiny_nli.build("tiny-nli", tmp_path)
    assert "was made by another recipe: pretraining tiny-nli instead" in capsys.readouterr().err
    assert (tmp_path / "model.safetensors").is_file()


def test_write_weights_makes_a_file_that_build_turns_back_into_the_pretrained_model(tmp_path, monkeypatch):
    """``python -m nlicot.offline.tiny_nli FILE`` (a short recipe here): the file it writes rebuilds its pretraining
    exactly."""
    import dataclasses

    import torch
    from safetensors.torch import load_file

    from nlicot.offline import tiny_nli

    short = dataclasses.replace(tiny_nli.RECIPES["tiny-nli"], steps=3, texts=40, batch_size=4)
    monkeypatch.setitem(tiny_nli.RECIPES, "tiny-nli", short)
    monkeypatch.setattr(tiny_nli, "weights_file", lambda name: tmp_path / "weights" / f"{name}.safetensors")
    written = tmp_path / "weights" / "tiny-nli.safetensors"
    tiny_nli.main([str(written)])  # writes the path given, nothing else
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["tiny-nli.safetensors", "weights"]  # no temp file left
    shipped, pretrained = tmp_path / "shipped", tmp_path / "pretrained"
    shipped.mkdir()
    pretrained.mkdir()
    tiny_nli.build("tiny-nli", shipped)  # from the file
    written.unlink()
    tiny_nli.build("tiny-nli", pretrained)  # no file: pretrains the same short recipe
    a, b = load_file(shipped / "model.safetensors"), load_file(pretrained / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
