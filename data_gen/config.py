"""Typed stage configs: one dataclass per stage, filled from a YAML file and then from command-line flags.

Precedence, lowest first: dataclass default < YAML (``--config``) < environment (``MISTRAL_SERVER_URL`` only) <
flag. Every key is checked against its type and unknown keys are refused, so a typo cannot silently fall back to
a default that costs money. Field help strings become ``--help``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from data_gen.errors import ConfigError

SERVER_URL_ENV = "MISTRAL_SERVER_URL"


def opt(default: Any, help: str) -> Any:  # noqa: A002 - the argparse name
    """A dataclass field whose help text is shown by ``--help``."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Price:
    """What one model costs, in GBP per million tokens, and how its prompts are tokenized for ``--dry-run``."""

    input_per_million: float
    output_per_million: float
    batch_discount: float = 0.5
    tokenizer: str = "v3"

    def __post_init__(self) -> None:
        if self.input_per_million < 0 or self.output_per_million < 0:
            raise ValueError("per-million prices must be >= 0")
        if not 0 <= self.batch_discount < 1:
            raise ValueError(f"batch_discount must be in [0, 1), got {self.batch_discount}")
        if self.tokenizer not in ("v3", "tekken"):
            raise ValueError(f"tokenizer must be 'v3' or 'tekken', got {self.tokenizer!r}")

    def cost(self, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        """GBP for one request's usage."""
        gbp = (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6
        return gbp * (1 - self.batch_discount) if batch else gbp


@dataclass
class ApiStageConfig:
    """Settings shared by every stage that calls the Mistral API (generate, reflect, score)."""

    input: Path | None = opt(None, "rows to process (required)")
    output: Path | None = opt(
        None, "append-only result JSONL (required); <stem>.failed/.ledger/.summary files are written beside it"
    )
    model: str = opt("open-mistral-7b", "model name sent to the API")
    prices: dict[str, Price] | Path | None = opt(
        None, "price table: a YAML file, or in the config a mapping model -> {input_per_million, ...} (GBP)"
    )
    budget: float | None = opt(None, "stop before the total spend recorded for this output passes this many GBP")
    dry_run: bool = opt(False, "estimate tokens and cost, call nothing, write nothing")
    retry_failed: bool = opt(False, "also retry rows recorded as failed by an earlier run")
    limit: int | None = opt(None, "process at most this many pending rows (for a trial run)")
    max_tries: int = opt(3, "answers per request before a row is failed (invalid JSON/label -> re-prompt)")
    max_tokens: int = opt(300, "max_tokens per request; also the output bound used by the budget check")
    expected_output_tokens: int = opt(120, "typical answer length, used by --dry-run for the expected cost")
    temperature: float = opt(0.2, "sampling temperature")
    seed: int | None = opt(0, "random_seed sent with each request (null: none)")
    server_url: str | None = opt(None, f"API base URL (env {SERVER_URL_ENV}); default: the Mistral API")
    api_key_env: str = opt("MISTRAL_API_KEY", "name of the environment variable holding the API key")
    concurrency: int = opt(16, "requests in flight at once")
    requests_per_second: float | None = opt(5.0, "request rate limit (null: none)")
    timeout_s: float = opt(60.0, "per-request timeout in seconds")
    max_retries: int = opt(6, "retries of one request on 429, 5xx, timeouts and connection errors")
    backoff_base_s: float = opt(1.0, "first retry delay; doubles per retry, with jitter")
    backoff_max_s: float = opt(60.0, "longest retry delay (a longer Retry-After is still honoured)")
    outage_s: float = opt(
        5.0, "stop (exit 3, rows stay pending) once no request has reached the server for this many seconds"
    )
    batch: bool = opt(False, "use the Batch API (upload, job, poll, download, merge) at the batch price")
    batch_poll_s: float = opt(30.0, "seconds between batch job polls")
    batch_max_wait_s: float | None = opt(None, "stop polling after this long (rerun resumes the same job)")
    batch_timeout_hours: int = opt(24, "timeout_hours given to each batch job")
    quiet: bool = opt(False, "no progress display")

    def check(self) -> None:
        """Refuse settings that cannot work, all problems at once."""
        problems = [f"missing required key {k!r}" for k in ("input", "output") if getattr(self, k) is None]
        positive = ("max_tries", "max_tokens", "concurrency", "timeout_s", "batch_poll_s", "batch_timeout_hours", "outage_s")
        problems += [f"{k} must be > 0, got {getattr(self, k)}" for k in positive if getattr(self, k) <= 0]
        problems += [f"{k} must be >= 0" for k in ("max_retries", "backoff_base_s", "backoff_max_s") if getattr(self, k) < 0]
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            problems.append("requests_per_second must be > 0 or null")
        if self.budget is not None and self.budget < 0:
            problems.append("budget must be >= 0")
        if self.limit is not None and self.limit < 0:
            problems.append("limit must be >= 0")
        if problems:
            raise ConfigError("; ".join(problems))

    def price_table(self) -> dict[str, Price]:
        """The ``prices`` mapping, reading the YAML file it names if it is a path."""
        if self.prices is None:
            raise ConfigError("no price table: give --prices FILE (e.g. configs/data_gen/prices.yaml) or prices: in the config")
        if isinstance(self.prices, dict):
            return self.prices
        return coerce(_read_yaml(self.prices), dict[str, Price], str(self.prices))


@dataclass
class GenerateConfig(ApiStageConfig):
    """generate: one 3-step thought and a label per input row (CSV or JSONL)."""

    columns: dict[str, str] = opt({}, "map our field names (id, premise, hypothesis, label) to the input's columns")


@dataclass
class ReflectConfig(ApiStageConfig):
    """reflect: a corrected thought for every generated row whose label was wrong."""

    model: str = opt("open-mistral-nemo", "model name sent to the API")
    max_tokens: int = opt(400, "max_tokens per request; also the output bound used by the budget check")
    expected_output_tokens: int = opt(160, "typical answer length, used by --dry-run for the expected cost")


@dataclass
class ScoreConfig(ApiStageConfig):
    """score (optional): LLM-as-judge scores; thoughts below the threshold are rewritten and judged again."""

    reflected: Path | None = opt(None, "reflect's output; its rows are scored too")
    model: str = opt("mistral-small-latest", "judge model")
    improve_model: str = opt("open-mistral-nemo", "model that rewrites a thought scored below the threshold")
    threshold: int = opt(4, "a thought passes when coherence, correctness and brevity are all >= this (1-5)")
    max_rounds: int = opt(2, "rewrite-and-rejudge rounds per thought")
    max_tokens: int = opt(200, "max_tokens per request; also the output bound used by the budget check")
    expected_output_tokens: int = opt(80, "typical answer length, used by --dry-run for the expected cost")

    def check(self) -> None:
        super().check()
        if not 1 <= self.threshold <= 5 or self.max_rounds < 0:
            raise ConfigError("threshold must be in 1..5 and max_rounds >= 0")


@dataclass
class BuildConfig:
    """build: stage outputs -> the corpus JSONL nlicot trains on, plus stats (no API calls)."""

    thoughts: Path | None = opt(None, "generate's output (required)")
    reflected: Path | None = opt(None, "reflect's output")
    scores: Path | None = opt(None, "score's output: its (possibly rewritten) thoughts replace the originals")
    min_score: int | None = opt(None, "with scores: drop rows whose lowest criterion is below this")
    out_dir: Path | None = opt(None, "folder for train/val/test.jsonl and stats.json/stats.md (required)")
    tokenizer: str = opt("tiny", "tokenizer for the length filter: 'tiny' (the real Mistral v3 one, offline) or a path/hub id")
    max_total_tokens: int = opt(512, "drop rows whose prompt + answer + EOS is longer (nlicot's token count)")
    balance: bool = opt(False, "downsample the majority label to the minority count")
    val_fraction: float = opt(0.1, "share of each label that goes to val.jsonl")
    test_fraction: float = opt(0.0, "share of each label that goes to test.jsonl (0: no test file)")
    seed: int = opt(0, "seed for balancing and splitting")
    histogram_bins: int = opt(16, "bins of the token length histogram")
    quiet: bool = opt(False, "no summary on stdout")

    def check(self) -> None:
        problems = [f"missing required key {k!r}" for k in ("thoughts", "out_dir") if getattr(self, k) is None]
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            problems.append("val_fraction and test_fraction must be in [0, 1) and sum to < 1")
        if self.max_total_tokens <= 0 or self.histogram_bins <= 0:
            problems.append("max_total_tokens and histogram_bins must be > 0")
        if self.min_score is not None and self.scores is None:
            problems.append("min_score needs scores")
        if problems:
            raise ConfigError("; ".join(problems))


def _read_yaml(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "").replace("pathlib.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting str -> Path, int -> float); name ``where`` on error."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        nested: list[ConfigError] = []  # errors from members that take a mapping, when a mapping was given
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
            except ConfigError as e:
                takes_mapping = typing.get_origin(arg) is dict or dataclasses.is_dataclass(arg)
                if takes_mapping and isinstance(value, dict):
                    nested.append(e)
        if nested:
            raise nested[0]
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        Path: lambda v: isinstance(v, (str, Path)) and str(v) != "",
    }[tp]
    if not ok(value):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return tp(value) if tp in (float, Path) else value


def build_dataclass(cls: type, values: Any, where: str) -> Any:
    """Instantiate ``cls`` from a mapping, refusing unknown keys and wrongly typed values."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if "api_key" in unknown:
        raise ConfigError(f"{where}: api_key is read from the environment only; remove it from the config")
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    try:
        return cls(**{k: coerce(v, hints[k], f"{where}: {k}") for k, v in values.items()})
    except (TypeError, ValueError) as e:  # a required field is missing, or __post_init__ refused a value
        raise ConfigError(f"{where}: {e}") from None


def load_config(cls: type, yaml_path: Path | None, overrides: dict[str, Any]) -> Any:
    """YAML (if any) < environment < overrides; then the stage's own ``check``."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        loaded = _read_yaml(yaml_path)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_path}: expected a mapping of keys, got {type(loaded).__name__}")
        values.update(loaded or {})
    if os.environ.get(SERVER_URL_ENV) and "server_url" in {f.name for f in dataclasses.fields(cls)}:
        values["server_url"] = os.environ[SERVER_URL_ENV]
    values.update(overrides)
    source = str(yaml_path) if yaml_path else "config"
    config = build_dataclass(cls, values, source)
    try:
        config.check()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return config
