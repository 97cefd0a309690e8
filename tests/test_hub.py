"""Model resolution (nlicot/hub.py): hub ids and folders pass through; offline names are built once, atomically."""

from __future__ import annotations

import os

from nlicot import hub


def test_offline_name_is_built_once_into_the_cache_and_other_names_pass_through(tmp_path, monkeypatch):
    monkeypatch.setenv("NLICOT_CACHE", str(tmp_path))
    assert hub.resolve_model_path("mistralai/Mistral-7B-v0.3") == "mistralai/Mistral-7B-v0.3"
    assert hub.resolve_model_path(str(tmp_path / "my-model")) == str(tmp_path / "my-model")
    builds = []
    real = hub.offline_models()["tiny"]
    monkeypatch.setattr(hub, "offline_models",
                        lambda: {"tiny": real._replace(build=lambda folder: builds.append(folder) or real.build(folder))})
    first = hub.resolve_model_path("tiny")
    again = hub.resolve_model_path("tiny")
    assert first == again == str(tmp_path / real.folder) and len(builds) == 1
    assert os.listdir(tmp_path) == [real.folder]  # no temp folder left beside it
    assert hub.load_tokenizer("tiny").pad_token_id == hub.load_tokenizer("tiny").eos_token_id


def test_building_a_base_leaves_the_callers_random_state_alone(tmp_path, monkeypatch):
    """The builders seed torch; a fit whose first use builds the base must still initialise its LoRA exactly like a
    fit that finds the base cached (measured before the fix: a clean-clone demo trained differently from step 1)."""
    import torch

    monkeypatch.setenv("NLICOT_CACHE", str(tmp_path))
    for name in ("tiny", "tiny-nli"):
        torch.manual_seed(7)
        expected = torch.rand(4)
        torch.manual_seed(7)
        hub.resolve_model_path(name)  # built now: the cache is empty
        assert torch.equal(torch.rand(4), expected), name
