"""Self-consistency: the vote on hand-made chains, calibration numbers by hand, seeded sampling, the predict CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from transformers import AutoModelForCausalLM

from nlicot.generation import (
    Chains,
    Generated,
    SeededSampling,
    generate_batched,
    sample_chains,
)
from nlicot.metrics import (
    NLIMetrics,
    accuracy_at_coverage,
    coverage_curve,
    reliability_bins,
    scalar_metrics,
)
from nlicot.predictions import records, update_metrics
from nlicot.prompt import encode_prompts
from nlicot.voting import majority_vote

# --- the vote ------------------------------------------------------------------------------------------------------


def test_majority_wins_and_confidence_counts_every_chain() -> None:
    vote = majority_vote([1, 0, 1, None, 1, 0, 1, 1])
    assert (vote.label, vote.confidence, vote.counts, vote.tie) == (1, 5 / 8, {0: 2, 1: 5}, False)
    # Unparsed chains do not vote but still count in the denominator.
    few = majority_vote([None, 0, None, None, 0, None, None, 0])
    assert (few.label, few.confidence) == (0, 3 / 8)


def test_tie_goes_to_the_most_likely_chain() -> None:
    labels = [0, 1, 1, 0]
    vote = majority_vote(labels, [-1.2, -0.9, -2.0, -0.4])
    assert (vote.label, vote.confidence, vote.tie, vote.representative) == (0, 0.5, True, 3)
    assert majority_vote(labels, [-1.2, -0.3, -2.0, -0.4]).label == 1


def test_tie_without_logprobs_goes_to_the_earliest_chain() -> None:
    assert majority_vote([None, 1, 0, 0, 1]).label == 1
    assert majority_vote([0, 1]).label == 0
    assert majority_vote([0, 1], [-1.0, -1.0]).label == 0  # equal values: earliest too
    assert majority_vote([None, 1, 0], [None, None, -3.0]).label == 0  # a known value beats a missing one


def test_representative_is_the_most_likely_winning_chain() -> None:
    vote = majority_vote([1, 1, 0, 1], [-2.0, -1.5, -0.1, -1.7])
    assert (vote.label, vote.representative, vote.tie) == (1, 1, False)  # chain 2 is likelier but lost the vote


def test_nothing_parsed_is_a_parse_failure() -> None:
    vote = majority_vote([None, None, None], [-1.0, -2.0, -3.0])
    assert (vote.label, vote.confidence, vote.representative, vote.counts) == (None, 0.0, None, {})
    with pytest.raises(ValueError, match="at least one"):
        majority_vote([])
    with pytest.raises(ValueError, match="log-probabilities"):
        majority_vote([1, 0], [-1.0])


def gen(text: str, logprob: float | None = None, reason: str = "json") -> Generated:
    return Generated(text, list(range(len(text) // 4 + 1)), reason, logprob)  # type: ignore[arg-type]


# Chains as a half-trained model writes them: prose around JSON, alias keys, word labels, a cut-off answer.
CHAINS = [
    gen('{"thought_process": "step 1: five shelves. step 2: twenty each. step 3: 100 books.", "predicted_label": 1}',
        -0.8),
    gen('Sure! Here is my answer:\n{"thought_process": "step 1: five times twenty. step 2: that is a hundred. '
        'step 3: the hypothesis follows.", "predicted_label": "entailment"}', -0.5),
    gen('{"thought": "step 1: the shelves are not full. step 2: fewer books. step 3: no.", "label": 0}', -0.6),
    gen('{"thought_process": "step 1: five shelves of twenty. step 2: one hundred', -0.2, "length"),
    gen("{'thought_process': 'step 1: twenty per shelf. step 2: five shelves. step 3: 100.', 'predicted_label': 1}",
        -1.1),
]


def test_vote_record_keeps_every_chain(tokenizer) -> None:
    rows = [{"id": "shelf", "premise": "Five shelves hold twenty books each.", "hypothesis": "There are 100 books.",
             "label": 1, "prompt_ids": [1]}]  # fmt: skip
    greedy = gen('{"thought_process": "step 1: x. step 2: y. step 3: z.", "predicted_label": 0}')
    (rec,) = records(tokenizer, rows, [Chains(CHAINS, greedy)])
    assert [c["predicted_label"] for c in rec["chains"]] == [1, 1, 0, None, 1]
    assert [c["parse_ok"] for c in rec["chains"]] == [True, True, True, False, True]
    assert rec["chains"][2]["thought_process"].startswith("step 1: the shelves are not full")
    assert rec["votes"] == {"0": 1, "1": 3, "unparsed": 1}
    assert (rec["predicted_label"], rec["confidence"], rec["tie"]) == (1, 3 / 5, False)
    assert rec["representative_chain"] == 1  # the likeliest chain among those voting 1
    assert rec["thought_process"] == rec["chains"][1]["thought_process"] and rec["raw"] == CHAINS[1].text
    assert rec["greedy"]["predicted_label"] == 0
    assert json.loads(json.dumps(rec)) == rec  # a predictions.jsonl line

    metric = NLIMetrics()
    update_metrics(metric, [rec])
    scores = scalar_metrics(metric.compute())
    assert scores["accuracy"] == 1.0 and scores["greedy_accuracy"] == 0.0
    assert scores["chain_accuracy"] == pytest.approx(3 / 5)  # the unparsed chain counts as wrong


def test_all_unparsed_record_is_a_failure(tokenizer) -> None:
    rows = [{"id": "x", "label": 0, "prompt_ids": [1]}]
    (rec,) = records(tokenizer, rows, [Chains([gen("I think so.", -1.0), gen('{"label": "maybe"}', -0.5)])])
    assert (rec["predicted_label"], rec["parse_ok"], rec["confidence"], rec["greedy"]) == (None, False, 0.0, None)
    assert rec["votes"] == {"0": 0, "1": 0, "unparsed": 2} and rec["representative_chain"] == 0


# --- calibration and selective prediction, by hand ----------------------------------------------------------------

# Ten rows of (confidence, vote correct).
CALIB = [(1.0, 1), (1.0, 1), (1.0, 0), (0.875, 1), (0.875, 1), (0.75, 1), (0.75, 0), (0.625, 0), (0.5, 1), (0.5, 0)]


def calib_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    conf, right = zip(*CALIB)
    return torch.tensor(conf), torch.tensor(right, dtype=torch.float)


def test_ece_matches_hand_computation() -> None:
    # Bins of width 0.1; each confidence level has its own bin: |accuracy - confidence| weighted by share of rows.
    hand = (3 / 10 * abs(2 / 3 - 1.0) + 2 / 10 * abs(1.0 - 0.875) + 2 / 10 * abs(0.5 - 0.75)
            + 1 / 10 * abs(0.0 - 0.625) + 2 / 10 * abs(0.5 - 0.5))  # fmt: skip
    assert hand == pytest.approx(0.1 + 0.025 + 0.05 + 0.0625)
    metric = NLIMetrics()
    conf, right = calib_tensors()
    gold = [1] * len(CALIB)
    metric.update([1 if r else 0 for r in right.tolist()], gold, [5] * len(CALIB), conf.tolist(), [0.5] * len(CALIB))
    result = metric.compute()
    assert float(result["ece"]) == pytest.approx(hand)
    assert float(result["mean_confidence"]) == pytest.approx(sum(conf.tolist()) / 10)
    assert math.isnan(float(result["greedy_accuracy"]))  # no greedy chain was decoded


def test_reliability_bins() -> None:
    table = reliability_bins(*calib_tensors())
    assert table.shape == (10, 3)
    assert table[:, 0].tolist() == [0, 0, 0, 0, 0, 2, 1, 2, 2, 3]
    assert table[9, 1:].tolist() == pytest.approx([2 / 3, 1.0])
    assert table[8, 1:].tolist() == pytest.approx([1.0, 0.875])
    assert torch.isnan(table[:5, 1]).all()


def test_accuracy_at_coverage_shares_ties_out() -> None:
    conf, right = calib_tensors()
    # Top 50 % = 5 rows: the three at 1.0 (2 right) and both at 0.875 (both right).
    assert accuracy_at_coverage(conf, right, 0.5) == pytest.approx(4 / 5)
    # Top 80 % = 8 rows: 7 rows down to 0.75 (5 right) plus 0.625 (wrong).
    assert accuracy_at_coverage(conf, right, 0.8) == pytest.approx(5 / 8)
    # Top 20 % = 2 rows out of the tied three at 1.0 (2/3 right each, in expectation).
    assert accuracy_at_coverage(conf, right, 0.2) == pytest.approx(2 / 3)
    assert accuracy_at_coverage(conf, right, 1.0) == pytest.approx(6 / 10)
    assert accuracy_at_coverage(conf.flip(0), right.flip(0), 0.2) == pytest.approx(2 / 3)  # order does not matter
    curve = coverage_curve(conf, right)
    assert torch.allclose(curve, torch.tensor([[0.3, 2 / 3], [0.5, 4 / 5], [0.7, 5 / 7], [0.8, 5 / 8], [1.0, 6 / 10]]))


def test_mixed_vote_and_plain_rows_are_refused() -> None:
    metric = NLIMetrics()
    metric.update([1], [1], [3], [1.0], [1.0])
    metric.update([1], [1], [3])
    with pytest.raises(ValueError, match="evaluate them separately"):
        metric.compute()
    with pytest.raises(ValueError, match="confidence must lie"):
        NLIMetrics().update([1], [1], [3], [1.5], [1.0])


# --- sampling -----------------------------------------------------------------------------------------------------


def test_seeded_sampling_draws_from_the_tempered_nucleus() -> None:
    """Gumbel-max on fixed scores: frequencies follow softmax(scores / T) restricted to the top-p set."""
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0, -4.0]]).repeat(4000, 1)
    probs = torch.softmax(scores[0] / 0.5, -1)  # [0.865, 0.117, 0.016, 0.002, ~0]
    proc = SeededSampling(list(range(4000)), temperature=0.5, top_p=1.0, device=torch.device("cpu"))
    picks = proc(None, scores).argmax(-1)
    freq = torch.bincount(picks, minlength=5) / 4000
    assert (freq - probs).abs().max() < 0.03
    # The recorded log-probability is the untempered model's, of the token taken.
    assert torch.allclose(proc.step_logprobs[0], scores[0].log_softmax(-1)[picks])
    nucleus = SeededSampling(list(range(4000)), temperature=0.5, top_p=0.9, device=torch.device("cpu"))
    picks = nucleus(None, scores).argmax(-1)
    assert set(picks.tolist()) == {0, 1}  # 0.865 < 0.9 <= 0.865 + 0.117
    assert float((picks == 1).float().mean()) == pytest.approx(0.117 / (0.865 + 0.117), abs=0.03)


def test_greedy_rows_get_the_raw_scores() -> None:
    scores = torch.tensor([[0.5, 3.0, 1.0], [0.5, 3.0, 1.0]])
    proc = SeededSampling([None, 7], temperature=5.0, top_p=0.5, device=torch.device("cpu"))
    out = proc(None, scores)
    assert torch.equal(out[0], scores[0])
    assert proc.step_logprobs[0][0] == pytest.approx(float(scores[0].log_softmax(-1)[1]))


PREMISES = ["A man plays a guitar on the corner of a busy street.", "Rain.", "Two kids run in a park near a pond.",
            "A woman reads."]  # fmt: skip
HYPOTHESES = ["Someone makes music.", "It is wet outside today.", "Children play.", "A book is open."]
KEYS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def model(tiny_path: str):
    return AutoModelForCausalLM.from_pretrained(tiny_path).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return encode_prompts(tokenizer, PREMISES, HYPOTHESES)


def sample(model, tokenizer, prompts, keys, **kwargs) -> list[Chains]:
    settings = {"num_samples": 3, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 10, "stop_at_json": False}
    return sample_chains(model, tokenizer, prompts, keys, **(settings | kwargs))


def tokens(chains: list[Chains]) -> list[list[list[int]]]:
    return [[g.token_ids for g in c.samples] for c in chains]


def logprobs(chains: list[Chains]) -> list[float]:
    return [g.mean_logprob for c in chains for g in c.samples]


@contextmanager
def decoder_calls(model) -> Iterator[list[tuple[int, int]]]:
    """The ``input_ids`` shape of every decoder call made inside the block (the first one is the prefill)."""
    shapes: list[tuple[int, int]] = []
    hook = model.model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                                 with_kwargs=True)  # fmt: skip
    try:
        yield shapes
    finally:
        hook.remove()


@pytest.fixture(scope="module")
def base(model, tokenizer, prompts) -> tuple[list[Chains], tuple[int, int]]:
    """Three chains for each prompt, all in one batch, and the shape of that batch's prefill."""
    with decoder_calls(model) as shapes:
        chains = sample(model, tokenizer, prompts, KEYS, batch_size=12)
    return chains, shapes[0]


def test_chains_depend_on_seed_and_row_only(model, tokenizer, prompts, base) -> None:
    chains, _ = base
    # Another batch size and order, a row alone: every row keeps its chains (log-probabilities then differ by
    # float rounding only, as the padding width changes).
    order = [2, 0, 3, 1]
    shuffled = sample(model, tokenizer, [prompts[i] for i in order], [KEYS[i] for i in order], batch_size=6)
    assert tokens(shuffled) == [tokens(chains)[i] for i in order]
    assert logprobs(shuffled) == pytest.approx([lp for i in order for lp in logprobs(chains)[3 * i : 3 * i + 3]],
                                               abs=1e-4)  # fmt: skip
    assert tokens(sample(model, tokenizer, prompts[1:2], KEYS[1:2])) == tokens(chains)[1:2]
    # The chains of a row differ from each other and from another seed's.
    assert all(len({tuple(t) for t in row}) == 3 for row in tokens(chains))
    assert tokens(sample(model, tokenizer, prompts, KEYS, batch_size=12, seed=1)) != tokens(chains)


def test_shared_prefill_runs_each_prompt_once_and_changes_nothing(model, tokenizer, prompts, base) -> None:
    chains, prefill = base
    with decoder_calls(model) as shapes:
        repeated = sample(model, tokenizer, prompts, KEYS, batch_size=12, share_prefill=False)
    longest = max(map(len, prompts))
    assert prefill == (4, longest - 1)  # one prefill row per prompt ...
    assert shapes[0] == (12, longest)  # ... instead of one per chain, as generate(num_return_sequences) does
    assert set(shapes[1:]) == {(12, 1)}
    assert tokens(repeated) == tokens(chains)
    assert logprobs(repeated) == pytest.approx(logprobs(chains), abs=1e-4)


def test_greedy_reference_is_the_greedy_decode(model, tokenizer, prompts, base) -> None:
    chains = sample(model, tokenizer, prompts, KEYS, greedy=True, batch_size=8)
    greedy = generate_batched(model, tokenizer, prompts, max_new_tokens=10, stop_at_json=False)
    assert [c.greedy.token_ids for c in chains] == [g.token_ids for g in greedy]
    assert all(c.greedy.mean_logprob is not None and c.greedy.mean_logprob < 0 for c in chains)
    assert tokens(chains) == tokens(base[0])  # the greedy row takes no sampled chain's random stream


@pytest.mark.parametrize(("kwargs", "message"), [({"num_samples": 0}, "num_samples"), ({"temperature": 0.0}, "temperature"),
                                                 ({"top_p": 0.0}, "top_p")])  # fmt: skip
def test_bad_sampling_settings(model, tokenizer, prompts, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        sample(model, tokenizer, prompts, KEYS, **kwargs)


# --- the CLI ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_cli_writes_chains_vote_confidence_and_figures(repo, tmp_path) -> None:
    """``predict`` with k = 3 from the hand-written demo config (fresh adapter: nothing to train for the plumbing)."""
    inputs = tmp_path / "pairs.csv"
    inputs.write_text("id,premise,hypothesis,label\nb,A long premise about three cats on a warm mat.,Cats rest.,1\n"
                      "a,Rain.,It is dry.,0\n")  # fmt: skip
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "nlicot", "predict", "--config", "configs/demo_handwritten.yaml", f"--data.predict_path={inputs}",
         f"--predictions.output_dir={out}", "--model.generation.max_new_tokens=6", "--model.generation.num_samples=3",
         "--model.generation.temperature=1.0", "--trainer.enable_progress_bar=false"],
        capture_output=True, text=True, cwd=repo, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == ["b", "a"]
    for r in recs:
        assert len(r["chains"]) == 3 and r["greedy"] is not None
        assert all({"thought_process", "predicted_label", "parse_ok", "mean_logprob", "raw"} <= set(c)
                   for c in r["chains"])  # fmt: skip
        assert sum(r["votes"].values()) == 3
        assert r["confidence"] == max(r["votes"]["0"], r["votes"]["1"]) / 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"ece", "greedy_accuracy", "chain_accuracy", "accuracy_at_coverage_50", "reliability"} <= set(metrics)
    for name in ("reliability_diagram", "accuracy_vs_coverage", "confusion_matrix"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "vote of 3 chains" in proc.stdout


@pytest.mark.slow
def test_validate_logs_vote_metrics_and_figures(repo, tmp_path) -> None:
    """Generation evaluation with k = 2 puts the vote's scores and figures into TensorBoard."""
    proc = subprocess.run(
        [sys.executable, "-m", "nlicot", "validate", "--config", "configs/demo_handwritten.yaml",
         "--generation_eval.rows=3", "--model.generation.max_new_tokens=4", "--model.generation.num_samples=2",
         "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
         f"--trainer.logger.init_args.save_dir={tmp_path}"],
        capture_output=True, text=True, cwd=repo, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (version,) = (tmp_path / "demo_handwritten").glob("version_*")
    acc = EventAccumulator(str(version))
    acc.Reload()
    assert {"val/accuracy", "val/greedy_accuracy", "val/chain_accuracy", "val/ece", "val/accuracy_at_coverage_50",
            "val/accuracy_at_coverage_80"} <= set(acc.Tags()["scalars"])  # fmt: skip
    assert {"val/reliability_diagram", "val/accuracy_vs_coverage"} <= set(acc.Tags()["images"])
