"""``run``: generate -> reflect -> [score] -> build as one command, under one budget, resumable by rerunning it.

Each stage keeps its own files and journal (the per-stage commands write exactly the same ones), so a rerun of
the same command resumes wherever the last one stopped: finished stages find nothing to do and pay nothing, the
interrupted one continues. The budget is the pipeline's: before each stage, what the other stages' ledgers
recorded is taken off it. Exit status: the first stage that returns 2 or 3 stops the run with that status; a
stage with failed rows (4) does not, and the run then returns 4.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_gen.config import ApiStageConfig, check_server_url
from data_gen.errors import EXIT_DONE, EXIT_FAILED_ROWS, EXIT_RESUMABLE, EXIT_USAGE, ConfigError, DataGenError
from data_gen.progress import pipeline_step
from data_gen.stages import build, generate, reflect, score
from data_gen.stages.build import BuildConfig
from data_gen.stages.generate import GenerateConfig
from data_gen.stages.reflect import ReflectConfig
from data_gen.stages.score import ScoreConfig
from data_gen.store import sidecar

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """run: generate -> reflect -> [score] -> build in one resumable command, under one budget."""

    generate: GenerateConfig
    """generate's settings; its output feeds every later stage"""
    reflect: ReflectConfig
    """reflect's settings (input: generate's output, filled in)"""
    build: BuildConfig
    """build's settings (thoughts, reflected, scores: the stage outputs, filled in)"""
    score: ScoreConfig | None = None
    """score's settings (input, reflected: filled in); null or left out: no scoring"""
    budget: float | None = None
    """GBP for the whole pipeline, counted over the ledgers of every stage output (a stage's own budget also holds)"""

    def api_stages(self) -> list[tuple[str, ApiStageConfig, Callable[[Any], int]]]:
        """The paid stages in pipeline order: (name, config, entry point)."""
        stages: list[tuple[str, ApiStageConfig, Callable[[Any], int]]] = [
            ("generate", self.generate, generate.main), ("reflect", self.reflect, reflect.main)]
        return stages + ([("score", self.score, score.main)] if self.score is not None else [])

    def check(self) -> None:
        """Feed each stage the outputs before it, then check every stage; all problems at once."""
        links = [(self.reflect, "reflect", "input", self.generate.output),
                 (self.build, "build", "thoughts", self.generate.output),
                 (self.build, "build", "reflected", self.reflect.output)]
        if self.score is not None:
            links += [(self.score, "score", "input", self.generate.output),
                      (self.score, "score", "reflected", self.reflect.output),
                      (self.build, "build", "scores", self.score.output)]
        problems = []
        for cfg, stage, key, value in links:
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
            elif getattr(cfg, key) != value:
                problems.append(f"{stage}.{key} is {getattr(cfg, key)} but the pipeline feeds it {value}: leave it out")
        if self.budget is not None and self.budget < 0:
            problems.append("budget must be >= 0")
        for name, cfg, _ in self.api_stages():
            if cfg.dry_run:
                problems.append(f"{name}.dry_run: later stages read earlier outputs; price a stage with "
                                f"`python -m data_gen {name} --dry-run` instead")
        for name, cfg in [(n, c) for n, c, _ in self.api_stages()] + [("build", self.build)]:
            try:
                cfg.check()
                if isinstance(cfg, ApiStageConfig):  # a later stage's URL, key or price found now, not after paying
                    check_server_url(cfg.server_url)
                    cfg.api_key()
                    unpriced = cfg.unpriced({cfg.model, getattr(cfg, "improve_model", cfg.model)})
                    problems += [f"{name}: no price for model {m!r} in {cfg.prices}" for m in unpriced]
            except ConfigError as e:
                problems.append(f"{name}: {e}")
        if problems:
            raise ConfigError("; ".join(problems))


def spent(outputs: dict[str, Path]) -> dict[str, float]:
    """GBP each stage output's ledger recorded, over every run."""
    return {name: c for name, c in build.stage_costs(dict(outputs)).items() if name != "total"}


def _stage_line(name: str, output: Path, rc: int | None, gbp: float) -> str:
    summary_path = sidecar(output, "summary", ".json")
    s = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    status = "not run" if rc is None else f"exit {rc}"
    counts = f"{s.get('done', '-'):>6} {s.get('failed', '-'):>6} {s.get('pending', '-'):>7}"
    reasons = "; ".join(f"{r['rows']}x {r['reason']}" for r in s.get("failure_reasons") or [])
    line = f"  {name:<9} {status:<8} {counts}  £{gbp:.4f}  {output}"
    return line + (f"\n            failed: {reasons}" if reasons else "")


def summary(cfg: PipelineConfig, codes: dict[str, int]) -> str:
    """One table for the whole pipeline: each stage's exit status, rows, GBP over all runs, and the corpus."""
    outputs = {name: stage.output for name, stage, _ in cfg.api_stages()}
    costs = spent(outputs)
    header = f"  {'stage':<9} {'status':<8} {'done':>6} {'failed':>6} {'pending':>7}  GBP (all runs)"
    lines = ["pipeline summary", header]
    lines += [_stage_line(name, output, codes.get(name), costs[name]) for name, output in outputs.items()]
    stats_path = cfg.build.out_dir / "stats.json" if cfg.build.out_dir else None
    if codes.get("build") == EXIT_DONE and stats_path is not None and stats_path.is_file():
        stats = json.loads(stats_path.read_text(encoding="utf-8"))
        splits = ", ".join(f"{k} {v['rows']}" for k, v in stats["splits"].items())
        lines.append(f"  {'build':<9} exit {codes['build']:<3}  corpus {splits} -> {cfg.build.out_dir} (stats.md)")
    else:
        status = "not run" if "build" not in codes else f"exit {codes['build']}"
        lines.append(f"  {'build':<9} {status:<8} no corpus written")
    budget = f" of a £{cfg.budget:.4f} budget" if cfg.budget is not None else ""
    lines.append(f"  total £{sum(costs.values()):.4f}{budget}")
    return "\n".join(lines)


def _done_rows(output: Path) -> int | None:
    """Done rows the stage's last run recorded (its summary), ``None`` before it ran."""
    path = sidecar(output, "summary", ".json")
    return json.loads(path.read_text(encoding="utf-8"))["done"] if path.is_file() else None


def _without_empty(stage_cfg: Any, keys: tuple[str, ...]) -> Any:
    """The stage's settings, less each optional input that a stage left without a single done row (all failed)."""
    empty = {key: None for key in keys if getattr(stage_cfg, key) is not None and not getattr(stage_cfg, key).is_file()}
    for key in empty:
        log.warning("%s has no done rows: going on without it", getattr(stage_cfg, key))
    return dataclasses.replace(stage_cfg, **empty)


def _stop(cfg: PipelineConfig, codes: dict[str, int], name: str) -> int:
    print(summary(cfg, codes))
    then = "rerun the same command to continue" if codes[name] == EXIT_RESUMABLE else "fix it and rerun"
    log.warning("run stopped at %s (exit %d); %s", name, codes[name], then)
    return codes[name]


def run(cfg: PipelineConfig) -> int:
    """Each paid stage under what is left of the budget, then build; stop at 2 or 3, go on past 4.

    Whatever happens, the run ends with its table; a stage's error (exit 2) follows it as one
    ``error: <stage>: …`` line. When generate ends with no done row, nothing is left to reflect, score or build:
    those steps are skipped and the run returns 4.
    """
    stages = cfg.api_stages()
    outputs = {name: stage.output for name, stage, _ in stages}
    codes: dict[str, int] = {}
    for index, (name, stage_cfg, main) in enumerate(stages, 1):
        if index > 1 and _done_rows(cfg.generate.output) == 0:
            log.warning("%s: skipped, generate has no done rows (reasons in its failed file)", name)
            continue
        if name == "score":
            stage_cfg = _without_empty(stage_cfg, ("reflected",))
        elsewhere = sum(gbp for other, gbp in spent(outputs).items() if other != name)
        if cfg.budget is not None:
            left = max(0.0, cfg.budget - elsewhere)
            own = stage_cfg.budget
            stage_cfg = dataclasses.replace(stage_cfg, budget=left if own is None else min(own, left))
        log.info("run %d/%d: %s (£%.4f spent by the other stages)", index, len(stages) + 1, name, elsewhere)
        with pipeline_step(index, len(stages) + 1, elsewhere):
            codes[name] = _guarded(cfg, codes, name, main, stage_cfg)
        if codes[name] in (EXIT_USAGE, EXIT_RESUMABLE):
            return _stop(cfg, codes, name)
    if _done_rows(cfg.generate.output) == 0:
        log.warning("build: skipped, generate has no done rows")
    else:
        log.info("run %d/%d: build", len(stages) + 1, len(stages) + 1)
        build_cfg = _without_empty(dataclasses.replace(cfg.build, quiet=True), ("reflected", "scores"))  # table: stats.md
        codes["build"] = _guarded(cfg, codes, "build", build.main, build_cfg)
    print(summary(cfg, codes))
    return EXIT_FAILED_ROWS if EXIT_FAILED_ROWS in codes.values() or "build" not in codes else EXIT_DONE


def _guarded(cfg: PipelineConfig, codes: dict[str, int], name: str, main: Callable[[Any], int], stage_cfg: Any) -> int:
    """The step's exit status. An error it raises (exit 2) still ends the run with its table, then goes on to the
    CLI as one ``error: <stage>: …`` line."""
    try:
        return main(stage_cfg)
    except DataGenError as e:
        codes[name] = EXIT_USAGE
        print(summary(cfg, codes))
        raise type(e)(f"{name}: {e}") from None
