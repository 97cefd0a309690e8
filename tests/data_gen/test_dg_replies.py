"""Real-style replies through the real ``mistralai`` SDK: accepted on the first try unless truly unusable.

The loopback server (``replay_server.py``) answers each pair with the reply written for it in
``fixtures/replies.yaml`` (capitalised or numbered steps, verdicts at the end, prose and fences around the JSON,
string labels, alias keys …), and with the case's ``retry`` once it has been re-prompted.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from replay_server import ReplayServer, load_cases

CASES = load_cases()


def _stage(name: str) -> list[dict]:
    return [c for c in CASES if c["stage"] == name]


def _first_try(server: ReplayServer, cases: list[dict]) -> tuple[int, int, list[str], list[str]]:
    """(usable accepted at once, usable, usable ones that were re-prompted, unusable ones that were not)."""
    usable = [c for c in cases if c["usable"]]
    at_once = [c["id"] for c in usable if server.first[c["id"]] == 1 and server.retries[c["id"]] == 0]
    reprompted_usable = [c["id"] for c in usable if server.retries[c["id"]]]
    missed = [c["id"] for c in cases if not c["usable"] and server.retries[c["id"]] == 0]
    return len(at_once), len(usable), reprompted_usable, missed


def _thoughts(path: Path, cases: list[dict], thought_key: str, wrong: bool) -> Path:
    """generate's output for these pairs (the flawed thought for reflect, the thought to grade for judge)."""
    rows = [{"id": c["id"], "premise": c["premise"], "hypothesis": c["hypothesis"], "label": c["label"],
             "thought_process": c[thought_key], "predicted_label": 1 - c["label"] if wrong else c["label"]} for c in cases]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_generate_accepts_real_style_replies_on_the_first_try(dg, flags, tmp_path, jsonl):
    cases = _stage("generate")
    rows = tmp_path / "rows.csv"
    with rows.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "premise", "hypothesis", "label"])
        writer.writerows([c["id"], c["premise"], c["hypothesis"], c["label"]] for c in cases)
    out = tmp_path / "thoughts.jsonl"
    with ReplayServer(CASES) as server:
        assert dg("generate", "--input", rows, "--output", out, *flags(server)) == 0
    accepted, usable, reprompted, missed = _first_try(server, cases)
    print(f"generate: {accepted}/{usable} usable replies accepted on the first try")
    assert accepted >= 0.95 * usable, reprompted
    assert missed == [] and server.unknown == 0  # every unusable reply was re-prompted
    done = {r["id"]: r for r in jsonl(out)}
    assert set(done) == {c["id"] for c in cases}  # the re-prompted ones were answered usably
    for case in (c for c in cases if c["usable"]):
        row = done[case["id"]]
        assert row["predicted_label"] == case["expect"]["label"], case["id"]
        assert row["quality"]["steps"] == case["expect"]["steps"], case["id"]
        assert row["thought_process"].startswith("step 1: ") == (case["expect"]["steps"] > 0), case["id"]
    assert done["g45"]["quality"]["verdict_consistent"] is False


def test_reflect_accepts_alias_keys_and_reprompts_a_wrong_label(dg, flags, tmp_path, jsonl):
    cases = _stage("reflect")
    thoughts = _thoughts(tmp_path / "thoughts.jsonl", cases, "flawed_thought", wrong=True)
    out = tmp_path / "reflected.jsonl"
    with ReplayServer(CASES) as server:
        assert dg("reflect", "--input", thoughts, "--output", out, *flags(server)) == 0
    accepted, usable, reprompted, missed = _first_try(server, cases)
    print(f"reflect: {accepted}/{usable} usable replies accepted on the first try")
    assert accepted == usable and missed == [], (reprompted, missed)
    done = {r["id"]: r for r in jsonl(out)}
    assert set(done) == {c["id"] for c in cases}
    assert all(r["quality"]["verdict_consistent"] for r in done.values())  # every corrected thought reaches its gold label
    assert done["r07"]["thought_process"].startswith("step 1: A woman is climbing a ladder")  # improved, not the echo
    assert done["r02"]["flaw_analysis"].startswith("The previous reasoning only matched the topic")


def test_judge_scores_in_real_styles(dg, flags, tmp_path, jsonl):
    cases = _stage("judge")
    thoughts = _thoughts(tmp_path / "thoughts.jsonl", cases, "thought", wrong=False)
    out = tmp_path / "scores.jsonl"
    with ReplayServer(CASES) as server:
        assert dg("score", "--input", thoughts, "--output", out, "--threshold", 1, *flags(server)) == 0
    accepted, usable, reprompted, missed = _first_try(server, cases)
    assert accepted == usable and missed == [], (reprompted, missed)
    done = {r["id"]: r for r in jsonl(out)}
    for case in (c for c in cases if c["usable"]):
        assert [done[case["id"]]["scores"][k] for k in ("coherence", "correctness", "brevity")] == case["scores"]
