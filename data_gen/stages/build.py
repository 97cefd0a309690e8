"""``build``: stage outputs -> the corpus ``nlicot`` trains on, plus a stats report. No API calls.

Order: choose each row's thought (initial if right, reflected if fixed, scored rewrite if given) -> drop rows
whose prompt + answer is longer than ``max_total_tokens`` (counted with nlicot's own template and the real
Mistral tokenizer, so the limit means exactly what training sees) -> optional label balancing -> a split
stratified by label. Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

from data_gen.config import BuildConfig as Config
from data_gen.corpus import GENERATED_FIELDS, THOUGHT_FIELDS, candidates, read_results
from data_gen.errors import InputError
from data_gen.store import Record, atomic_write_json, atomic_write_text, read_jsonl, sidecar
from nlicot.hub import load_tokenizer
from nlicot.prompt import encode_answers, encode_prompts

log = logging.getLogger(__name__)
CORPUS_KEYS = ("id", "premise", "hypothesis", "label", "thought_process", "source")
SPLITS = ("train", "val", "test")


def token_lengths(tokenizer: Any, rows: list[Record]) -> list[int]:
    """Prompt + answer + EOS tokens of each row, exactly as nlicot encodes it."""
    if not rows:
        return []
    prompts = encode_prompts(tokenizer, [r["premise"] for r in rows], [r["hypothesis"] for r in rows])
    answers = encode_answers(tokenizer, [r["thought_process"] for r in rows], [r["label"] for r in rows])
    return [len(p) + len(a) for p, a in zip(prompts, answers, strict=True)]


def classifier_metrics(rows: list[Record]) -> dict[str, Any]:
    """How good the generation model was as a classifier (positive class: 1 = entailment)."""
    c = Counter((r["label"], r["predicted_label"]) for r in rows)
    tp, fp, tn, fn = c[(1, 1)], c[(0, 1)], c[(0, 0)], c[(1, 0)]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "rows": len(rows),
        "accuracy": (tp + tn) / len(rows) if rows else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def histogram(values: list[int], bins: int, limit: int) -> dict[str, list[int]]:
    """Equal-width bins from 0 to max(values, limit), so the limit always falls on the chart."""
    top = max([limit, *values])
    width = max(1, -(-top // bins))
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, v // width)] += 1
    return {"edges": [i * width for i in range(bins + 1)], "counts": counts}


def split(rows: list[Record], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Record]]:
    """Shuffle each label's rows with ``seed`` and cut val and test shares (rounded up) off the front."""
    rng = random.Random(seed)
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for label in (0, 1):
        group = sorted((r for r in rows if r["label"] == label), key=lambda r: r["id"])
        rng.shuffle(group)
        n_val, n_test = math.ceil(len(group) * val_fraction), math.ceil(len(group) * test_fraction)
        out["val"] += group[:n_val]
        out["test"] += group[n_val : n_val + n_test]
        out["train"] += group[n_val + n_test :]
    for part in out.values():
        rng.shuffle(part)  # labels interleaved rather than in two blocks
    return out


def balance(rows: list[Record], seed: int) -> list[Record]:
    """Keep as many rows of the majority label as the minority has (seeded choice), in the original order."""
    by_label = {lab: [r for r in rows if r["label"] == lab] for lab in (0, 1)}
    n = min(len(g) for g in by_label.values())
    rng = random.Random(seed)
    keep = {r["id"] for g in by_label.values() for r in (g if len(g) == n else rng.sample(g, n))}
    return [r for r in rows if r["id"] in keep]


def stage_costs(paths: dict[str, Path | None]) -> dict[str, float]:
    """GBP recorded in each input's ledger (what making this corpus cost)."""
    costs = {name: sum(float(rec.get("gbp", 0.0)) for _, rec in read_jsonl(sidecar(p, "ledger"))) for name, p in paths.items() if p}
    return {**costs, "total": sum(costs.values())}


def _by(rows: list[Record], key: str) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(r[key] for r in rows).items())}


def render_markdown(stats: dict[str, Any]) -> str:
    """stats.json for a human reader, with a text histogram."""
    g, m = stats["generate"], stats["initial_model"]
    lines = [
        "# Corpus statistics",
        "",
        f"Generated rows: {g['done']} done ({g['failed']} failed, not used). Initial model on them: accuracy "
        f"{m['accuracy']:.3f}, precision {m['precision']:.3f}, recall {m['recall']:.3f}, F1 {m['f1']:.3f} "
        f"(positive class: entailment; TP {m['confusion']['tp']}, FP {m['confusion']['fp']}, "
        f"TN {m['confusion']['tn']}, FN {m['confusion']['fn']}).",
        "",
        "| step | rows |",
        "|---|---|",
        *(f"| {k.replace('_', ' ')} | {v} |" for k, v in stats["selection"].items()),
        "",
        "| split | rows | label 0 | label 1 | initial | reflected |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in stats["splits"].items():
        lab, src = s["by_label"], s["by_source"]
        lines.append(f"| {name} | {s['rows']} | {lab.get('0', 0)} | {lab.get('1', 0)} | {src.get('initial', 0)} | {src.get('reflected', 0)} |")
    t = stats["tokens"]
    lines += [
        "",
        f"Tokens per example (prompt + answer + EOS, limit {t['limit']}), before the length filter: "
        f"min {t['min']}, median {t['median']}, p95 {t['p95']}, max {t['max']}.",
        "",
        "```",
    ]
    counts = t["histogram"]["counts"]
    edges = t["histogram"]["edges"]
    scale = max(1, max(counts)) / 50
    for i, c in enumerate(counts):
        mark = " <- limit" if edges[i] < t["limit"] <= edges[i + 1] else ""
        lines.append(f"{edges[i]:>5}-{edges[i + 1] - 1:<5} {c:>6} {'#' * round(c / scale)}{mark}")
    lines += ["```", "", "Cost (GBP): " + ", ".join(f"{k} £{v:.4f}" for k, v in stats["cost_gbp"].items()), ""]
    return "\n".join(lines)


def main(cfg: Config) -> int:
    assert cfg.thoughts is not None and cfg.out_dir is not None
    generated = read_results(cfg.thoughts, GENERATED_FIELDS, purpose="build")
    reflected = read_results(cfg.reflected, THOUGHT_FIELDS) if cfg.reflected else []
    rows, selection = candidates(generated, reflected)
    if cfg.scores:
        scored = {r["id"]: r for r in read_results(cfg.scores, THOUGHT_FIELDS)}
        kept = []
        for r in rows:
            s = scored.get(r["id"])
            if s is not None:
                r = {**r, "thought_process": s["thought_process"]}
                if cfg.min_score is not None and min(s["scores"].values()) < cfg.min_score:
                    selection["low_score"] += 1
                    continue
            kept.append(r)
        rows = kept
    tokenizer = load_tokenizer(cfg.tokenizer)
    lengths = token_lengths(tokenizer, rows)
    fits = [r for r, n in zip(rows, lengths) if n <= cfg.max_total_tokens]
    selection["too_long"] = len(rows) - len(fits)
    if cfg.balance:
        balanced = balance(fits, cfg.seed)
        selection["balanced_out"] = len(fits) - len(balanced)
        fits = balanced
    if not fits:
        raise InputError(f"no rows left for the corpus from {cfg.thoughts} (selection: {dict(selection)})")
    parts = split(fits, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    if not parts["train"]:
        raise InputError(f"{len(fits)} rows are too few for val_fraction + test_fraction: train would be empty")
    failed = sum(1 for _ in read_jsonl(sidecar(cfg.thoughts, "failed")))
    selection["corpus"] = len(fits)
    texts = {
        name: "".join(json.dumps({k: r[k] for k in CORPUS_KEYS}, ensure_ascii=False) + "\n" for r in part)
        for name, part in parts.items()
        if name != "test" or cfg.test_fraction > 0
    }
    stats: dict[str, Any] = {
        "inputs": {"thoughts": str(cfg.thoughts), "reflected": str(cfg.reflected) if cfg.reflected else None,
                   "scores": str(cfg.scores) if cfg.scores else None},
        "generate": {"done": len(generated), "failed": failed},
        "initial_model": classifier_metrics(generated),
        "selection": dict(selection),
        "corpus": {"rows": len(fits), "by_source_and_label": {
            src: _by([r for r in fits if r["source"] == src], "label") for src in ("initial", "reflected")}},
        "splits": {
            name: {"file": f"{name}.jsonl", "rows": len(parts[name]), "by_label": _by(parts[name], "label"),
                   "by_source": _by(parts[name], "source"), "sha256": hashlib.sha256(text.encode()).hexdigest()}
            for name, text in texts.items()
        },
        "tokens": {
            "limit": cfg.max_total_tokens,
            "min": min(lengths), "median": sorted(lengths)[len(lengths) // 2],
            "p95": sorted(lengths)[min(len(lengths) - 1, int(0.95 * len(lengths)))], "max": max(lengths),
            "histogram": histogram(lengths, cfg.histogram_bins, cfg.max_total_tokens),
        },
        "cost_gbp": stage_costs({"generate": cfg.thoughts, "reflect": cfg.reflected, "score": cfg.scores}),
        "settings": {"tokenizer": cfg.tokenizer, "balance": cfg.balance, "val_fraction": cfg.val_fraction,
                     "test_fraction": cfg.test_fraction, "seed": cfg.seed, "min_score": cfg.min_score},
    }
    for name, text in texts.items():
        atomic_write_text(cfg.out_dir / f"{name}.jsonl", text)
    stale = cfg.out_dir / "test.jsonl"
    if "test" not in texts and stale.exists():
        stale.unlink()  # from an earlier build with a test split: it would not match this corpus
        log.info("removed %s left by an earlier build (test_fraction is 0 now)", stale)
    atomic_write_json(cfg.out_dir / "stats.json", stats)
    atomic_write_text(cfg.out_dir / "stats.md", render_markdown(stats))
    if not cfg.quiet:
        print(render_markdown(stats))
    log.info("build: %d rows -> %s (%s)", len(fits), cfg.out_dir, ", ".join(f"{k} {len(v)}" for k, v in parts.items()))
    return 0
