"""``build``: stage outputs -> the corpus ``nlicot`` trains on, plus a stats report. No API calls.

Order: choose each row's thought (initial if right, reflected if fixed, scored rewrite if given) -> keep each
(premise, hypothesis) pair once -> drop thoughts that break the ``quality`` rules (flags from
:func:`data_gen.answers.quality`, recomputed here because a reflected or rewritten thought replaced the one
generate measured) -> drop rows whose prompt + answer is longer than ``max_total_tokens`` (counted with nlicot's
own template and the real Mistral tokenizer, so the limit means exactly what training sees) -> optional label
balancing -> a split chosen by a hash of each pair's content, so a pair is never in two splits and stays in its
split when the corpus is rebuilt or grows. stats.json/stats.md count the rows each step and each rule removed.
Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_gen.answers import QUALITY_PRESETS, QUALITY_RULES, QualityRules, quality
from data_gen.errors import ConfigError, InputError
from data_gen.results import GENERATED_FIELDS, THOUGHT_FIELDS, candidates, read_results
from data_gen.store import Record, atomic_write_json, atomic_write_text, read_jsonl, sidecar
from nlicot.corpus import LABEL_ONLY, CorpusError, load_rows, pair_id
from nlicot.hub import load_tokenizer
from nlicot.prompt import encode_answers, encode_prompts

log = logging.getLogger(__name__)
CORPUS_KEYS = ("id", "premise", "hypothesis", "label", "thought_process", "source")
SPLITS = ("train", "val", "test")


@dataclass
class BuildConfig:
    """build: stage outputs -> the corpus JSONL nlicot trains on, plus stats (no API calls)."""

    thoughts: Path | None = None
    """generate's output (required)"""
    reflected: Path | None = None
    """reflect's output"""
    scores: Path | None = None
    """score's output: its (possibly rewritten) thoughts replace the originals"""
    min_score: int | None = None
    """with scores: drop rows whose lowest criterion is below this"""
    label_only: Path | None = None
    """rows with a gold label and no paid thought (CSV/JSONL: premise, hypothesis, label), carried into the corpus
    with source label_only (GRPO's label-only rows); a pair that already has a thought is left out (counted)"""
    out_dir: Path | None = None
    """folder for train/val/test.jsonl and stats.json/stats.md (required)"""
    tokenizer: str = "tiny"
    """tokenizer for the length filter: 'tiny' (the real Mistral v3 one, offline) or a path/hub id"""
    max_total_tokens: int = 512
    """drop rows whose prompt + answer + EOS is longer (nlicot's token count)"""
    quality: str | QualityRules = "standard"
    """which thoughts enter the corpus: lenient | standard | strict, or rules {verdict_must_agree, steps,
    verdict_required, min_words, max_words} (unset ones as in standard); lenient keeps a verdict that contradicts
    the label"""
    balance: bool = False
    """downsample the majority label to the minority count"""
    val_fraction: float = 0.1
    """expected share of pairs in val.jsonl (chosen by a hash of each pair's content; not stratified by label)"""
    test_fraction: float = 0.0
    """expected share of pairs in test.jsonl (0: no test file; chosen like val)"""
    seed: int = 0
    """seed for balancing and splitting"""
    histogram_bins: int = 16
    """bins of the token length histogram"""
    quiet: bool = False
    """no summary on stdout"""

    def quality_rules(self) -> QualityRules:
        return QUALITY_PRESETS[self.quality] if isinstance(self.quality, str) else self.quality

    def check(self) -> None:
        problems = [f"missing required key {k!r}" for k in ("thoughts", "out_dir") if getattr(self, k) is None]
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            problems.append("val_fraction and test_fraction must be in [0, 1) and sum to < 1")
        if self.max_total_tokens <= 0 or self.histogram_bins <= 0:
            problems.append("max_total_tokens and histogram_bins must be > 0")
        if self.min_score is not None and self.scores is None:
            problems.append("min_score needs scores")
        if isinstance(self.quality, str) and self.quality not in QUALITY_PRESETS:
            problems.append(f"quality must be one of {', '.join(QUALITY_PRESETS)} or a mapping of rules, got {self.quality!r}")
        if problems:
            raise ConfigError("; ".join(problems))


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


def _unit(row: Record, seed: int) -> float:
    """Where a pair falls in [0, 1): SHA-256 of the seed and the pair's content id."""
    digest = hashlib.sha256(f"{seed}\n{pair_id(row['premise'], row['hypothesis'])}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(rows: list[Record], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Record]]:
    """val below ``val_fraction``, test below ``val_fraction + test_fraction``, train above, by :func:`_unit`.

    A pair's split depends on its content and the seed only, not on the other rows. A split asked for but caught
    no pair (a tiny corpus) takes the train pair nearest to its range, so it is never empty while train has two.
    """
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    ranked = sorted(rows, key=lambda r: _unit(r, seed))  # a seeded, content-defined order within each split
    for r in ranked:
        u = _unit(r, seed)
        out["val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"].append(r)
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        if fraction > 0 and not out[name] and len(out["train"]) > 1:
            out[name].append(out["train"].pop(0))
    return out


def dedup_pairs(rows: list[Record]) -> tuple[list[Record], int]:
    """The first row of each (premise, hypothesis) pair, and how many repeats were dropped."""
    seen: set[str] = set()
    kept = []
    for r in rows:
        key = pair_id(r["premise"], r["hypothesis"])
        if key not in seen:
            seen.add(key)
            kept.append(r)
    return kept, len(rows) - len(kept)


@dataclass
class QualityReport:
    """What the quality filter did, per rule and per label, so that a filter that skews the labels is seen."""

    removed: dict[str, int]  # rule -> rows it removed (each row under its first broken rule)
    removed_by_label: dict[str, dict[str, int]]  # rule -> label -> rows
    rows_by_label: dict[str, int]  # rows that reached the filter
    uncertain_verdict: int  # rows kept whose verdict cues disagree (the reader is unsure; not a contradiction)

    def skews(self) -> list[str]:
        """Rules that removed one label at more than twice the rate of the other."""
        out = []
        for rule, by_label in self.removed_by_label.items():
            rates = {lab: by_label[lab] / n for lab, n in self.rows_by_label.items() if n}
            if len(rates) == 2 and sum(by_label.values()) and max(rates.values()) > 2 * min(rates.values()):
                shown = ", ".join(f"label {lab}: {by_label[lab]} of {self.rows_by_label[lab]}" for lab in sorted(rates))
                out.append(f"quality rule {rule} removed one label at more than twice the rate of the other ({shown})")
        return out


def filter_quality(rows: list[Record], rules: QualityRules) -> tuple[list[Record], QualityReport]:
    """Rows whose thought passes ``rules``, and what each rule removed, per label."""
    labels = ("0", "1")
    report = QualityReport(dict.fromkeys(QUALITY_RULES, 0), {rule: dict.fromkeys(labels, 0) for rule in QUALITY_RULES},
                           {lab: sum(str(r["label"]) == lab for r in rows) for lab in labels}, 0)
    kept = []
    for r in rows:
        flags = quality(r["thought_process"], r["label"])
        rule = rules.failed_rule(flags)
        if rule is None:
            kept.append(r)
            report.uncertain_verdict += flags["verdict_uncertain"]
        else:
            report.removed[rule] += 1
            report.removed_by_label[rule][str(r["label"])] += 1
    return kept, report


def label_only_rows(path: Path, paid: list[Record]) -> tuple[list[Record], int]:
    """``path``'s rows as label-only corpus rows (content ids), minus the pairs ``paid`` has; and how many those were."""
    try:
        rows = load_rows(str(path), require_thought=False, content_ids=True)
    except CorpusError as e:
        raise InputError(f"label_only: {e}") from None
    have = {pair_id(r["premise"], r["hypothesis"]) for r in paid}
    kept = [{**{k: r[k] for k in ("id", "premise", "hypothesis", "label")}, "thought_process": None,
             "source": LABEL_ONLY} for r in rows if pair_id(r["premise"], r["hypothesis"]) not in have]
    return kept, len(rows) - len(kept)


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
        f"Quality rules ({stats['quality']['preset'] or 'custom'}): "
        + ", ".join(f"{k} {v}" for k, v in stats["quality"]["rules"].items())
        + ". Removed per label (rows reaching the filter: "
        + ", ".join(f"label {k} {v}" for k, v in stats["quality"]["rows_by_label"].items()) + "): "
        + ", ".join(f"{rule} {by['0']}/{by['1']}" for rule, by in stats["quality"]["removed_by_label"].items())
        + f" (label 0/1); kept with an uncertain verdict: {stats['quality']['uncertain_verdict']}.",
        *(f"**Warning:** {w}." for w in stats["quality"]["skews"]),
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


def main(cfg: BuildConfig) -> int:
    assert cfg.thoughts is not None and cfg.out_dir is not None
    duplicates: Counter[str] = Counter()
    generated = read_results(cfg.thoughts, GENERATED_FIELDS, purpose="build", counts=duplicates)
    reflected = read_results(cfg.reflected, THOUGHT_FIELDS, counts=duplicates) if cfg.reflected else []
    rows, selection = candidates(generated, reflected)
    selection.update(duplicates)
    if cfg.scores:
        scored = {r["id"]: r for r in read_results(cfg.scores, THOUGHT_FIELDS, counts=selection)}
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
    rows, selection["duplicate_pair"] = dedup_pairs(rows)
    rules = cfg.quality_rules()
    rows, report = filter_quality(rows, rules)
    selection.update({f"quality_{rule}": n for rule, n in report.removed.items()})
    for warning in report.skews():
        log.warning("%s: check the rule (or use --quality lenient)", warning)
    tokenizer = load_tokenizer(cfg.tokenizer)
    lengths = token_lengths(tokenizer, rows)
    fits = [r for r, n in zip(rows, lengths) if n <= cfg.max_total_tokens]
    selection["too_long"] = len(rows) - len(fits)
    if cfg.balance:
        balanced = balance(fits, cfg.seed)
        selection["balanced_out"] = len(fits) - len(balanced)
        fits = balanced
    if cfg.label_only:
        extra, selection["label_only_has_thought"] = label_only_rows(cfg.label_only, fits)
        selection["label_only"] = len(extra)
        fits = fits + extra
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
                   "scores": str(cfg.scores) if cfg.scores else None,
                   "label_only": str(cfg.label_only) if cfg.label_only else None},
        "generate": {"done": len(generated), "failed": failed},
        "initial_model": classifier_metrics(generated),
        "selection": dict(selection),
        "corpus": {"rows": len(fits), "by_source_and_label": {
            src: _by([r for r in fits if r["source"] == src], "label") for src in ("initial", "reflected", LABEL_ONLY)}},
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
        "quality": {"preset": cfg.quality if isinstance(cfg.quality, str) else None, "rules": dataclasses.asdict(rules),
                    **dataclasses.asdict(report), "skews": report.skews()},
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
