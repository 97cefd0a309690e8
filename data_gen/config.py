"""Typed configs on jsonargparse: the settings every API stage shares, the price table, and config loading.

Each stage's own dataclass lives next to the stage (``data_gen/stages/*.py``); the field docstrings are the
``--help``. Precedence, lowest first: dataclass default < YAML (``--config``) < environment
(``MISTRAL_SERVER_URL`` only) < flag. jsonargparse checks every value against its type; before it runs, each
config file is read here so that an unknown key (a typo must not fall back to a default that costs money) or an
``api_key`` is refused by name, with the file named.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import typing
from argparse import ArgumentError
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from jsonargparse import ArgumentParser, set_parsing_settings

from data_gen.errors import ConfigError
from nlicot.terse_errors import one_line

log = logging.getLogger(__name__)
SERVER_URL_ENV = "MISTRAL_SERVER_URL"


def check_server_url(url: str | None) -> None:
    """Refuse a URL the SDK cannot send to (``not-a-url``, no scheme, no host) before any work is done."""
    if url is None:
        return
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0  # .port raises ValueError on a non-numeric port
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigError(f"server_url: {url!r} is not an http(s) URL with a host (e.g. http://127.0.0.1:8000)")


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

    input: Path | None = None
    """rows to process (required)"""
    output: Path | None = None
    """append-only result JSONL (required); <stem>.failed/.ledger/.summary files are written beside it"""
    model: str = "open-mistral-7b"
    """model name sent to the API"""
    prices: dict[str, Price] | Path | None = None
    """price table: a YAML file, or in the config a mapping model -> {input_per_million, ...} (GBP)"""
    budget: float | None = None
    """stop before the total spend recorded for this output passes this many GBP"""
    dry_run: bool = False
    """estimate tokens and cost, call nothing, write nothing"""
    retry_failed: bool = False
    """also retry rows recorded as failed by an earlier run"""
    limit: int | None = None
    """process at most this many pending rows (for a trial run)"""
    max_tries: int = 3
    """answers per request before a row is failed (invalid JSON/label -> re-prompt)"""
    max_tokens: int = 300
    """max_tokens per request; also the output bound used by the budget check"""
    expected_output_tokens: int = 120
    """typical answer length, used by --dry-run for the expected cost"""
    temperature: float = 0.2
    """sampling temperature"""
    seed: int | None = 0
    """random_seed sent with each request (null: none)"""
    server_url: str | None = None
    """API base URL (env MISTRAL_SERVER_URL); default: the Mistral API. Any OpenAI-compatible server works (vLLM,
    llama.cpp, Ollama, transformers serve): its models cost 0 unless the price table names them"""
    api_key_env: str = "MISTRAL_API_KEY"
    """name of the environment variable holding the API key"""
    concurrency: int = 16
    """requests in flight at once"""
    requests_per_second: float | None = 5.0
    """request rate limit (null: none)"""
    timeout_s: float = 60.0
    """per-request timeout in seconds"""
    max_retries: int = 6
    """retries of one request on 429, 5xx, timeouts and connection errors"""
    backoff_base_s: float = 1.0
    """first retry delay; doubles per retry, with jitter"""
    backoff_max_s: float = 60.0
    """longest retry delay (a longer Retry-After is still honoured)"""
    outage_s: float = 5.0
    """stop (exit 3, rows stay pending) once no request has reached the server for this many seconds"""
    batch: bool = False
    """use the Batch API (upload, job, poll, download, merge) at the batch price"""
    batch_poll_s: float = 30.0
    """seconds between batch job polls"""
    batch_max_wait_s: float | None = None
    """stop polling after this long (rerun resumes the same job)"""
    batch_timeout_hours: int = 24
    """timeout_hours given to each batch job"""
    quiet: bool = False
    """no progress display"""

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

    def api_key(self) -> str | None:
        """The key from ``$api_key_env``; a server of your own (``server_url``) may do without one."""
        key = os.environ.get(self.api_key_env) or None
        if key is None and self.server_url is None:
            raise ConfigError(
                f"${self.api_key_env} is not set: export the Mistral API key (it is read from the environment only)"
            )
        return key

    def unpriced(self, models: Iterable[str]) -> list[str]:
        """The models the price table lacks; none with a ``server_url`` (a server of your own costs nothing)."""
        return [] if self.server_url else sorted(set(models) - set(self.price_table()))

    def prices_for(self, models: Iterable[str]) -> dict[str, Price]:
        """The price table, plus a price of 0 (and one warning) for each of ``models`` it lacks on a ``server_url``."""
        table = {} if self.prices is None and self.server_url else self.price_table()
        free = sorted(set(models) - set(table)) if self.server_url else []
        if free:
            log.warning("no price for %s in the price table: counted as free (a server_url is set, %s)",
                        ", ".join(map(repr, free)), self.server_url)
        return {**table, **dict.fromkeys(free, Price(0.0, 0.0))}

    def price_table(self) -> dict[str, Price]:
        """The ``prices`` mapping, reading the YAML file it names if it is a path."""
        if self.prices is None:
            raise ConfigError("no price table: give --prices FILE (e.g. configs/data_gen/prices.yaml) or prices: in the config")
        if isinstance(self.prices, dict):
            return self.prices
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--prices", type=dict[str, Price])
        try:
            return parser.instantiate(parser.parse_object({"prices": read_yaml(self.prices)})).prices
        except (ArgumentError, ValueError, TypeError) as e:
            raise ConfigError(f"{self.prices}: {one_line(str(e))[1]}") from None


# --- loading -------------------------------------------------------------------------------------------------


def read_yaml(path: Path) -> Any:
    """A YAML file's content; an unreadable file or bad YAML is one error naming the file (and line)."""
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


def check_keys(cls: type, values: Any, where: str, extra: tuple[str, ...] = ()) -> None:
    """Refuse a config mapping with keys ``cls`` does not have (nested dataclasses too) or with an API key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)} | dict.fromkeys(extra)
    unknown = sorted(set(values) - set(fields))
    if "api_key" in unknown:
        raise ConfigError(f"{where}: api_key is read from the environment only; remove it from the config")
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in extra:
            continue
        nested = [t for t in (hints[key], *typing.get_args(hints[key])) if dataclasses.is_dataclass(t)]
        if nested and isinstance(value, dict):
            check_keys(nested[0], value, f"{where}: {key}")


def error_line(error: ArgumentError, flags: dict[str, str], source: str) -> str:
    """Where a jsonargparse error came from (the flag as typed, else the config file) and why, on one line."""
    unknown = re.match(r"unrecognized arguments: (.*)", str(error))
    if unknown:  # the flags only: a mistyped secret's value is not echoed
        return f"unknown flag(s) {' '.join(a for a in unknown.group(1).split() if a.startswith('-'))}; see --help"
    key, reason = one_line(str(error))
    return reason if key is None else f"{flags[key] if key in flags else f'{source}: {key}'}: {reason}"


def flag_keys(argv: list[str]) -> dict[str, str]:
    """Config keys given as flags -> the flag as typed (``max_tokens`` -> ``--max-tokens``)."""
    return {a[2:].split("=", 1)[0].replace("-", "_"): a.split("=", 1)[0] for a in argv if a.startswith("--")}


def normalise_flags(argv: list[str], cls: type) -> list[str]:
    """Today's spellings for jsonargparse: ``--max-tokens`` -> ``--max_tokens``, ``--batch`` -> ``--batch=true``,
    ``--no-batch`` -> ``--batch=false`` (booleans of nested configs too: ``--generate.no-batch``)."""
    booleans = _bool_keys(cls)
    out: list[str] = []
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or arg == "--":
            out.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        head, _, last = name.rpartition(".")
        if last == "api_key":
            flag = arg.split("=", 1)[0]
            raise ConfigError(f"{flag}: the API key is read from the environment only (see api_key_env)")
        negated = f"{head}.{last[3:]}" if head else last[3:]
        value_follows = i + 1 < len(argv) and not argv[i + 1].startswith("-")  # no positionals: it is our value
        if not eq and last.startswith("no_") and negated in booleans:
            out.append(f"--{negated}=false")
        elif not eq and name in booleans and not value_follows:
            out.append(f"--{name}=true")
        else:
            out.append(f"--{name}{eq}{value}")
    return out


def _bool_keys(cls: type, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, tp in typing.get_type_hints(cls).items():
        if tp is bool:
            keys.add(prefix + name)
        for t in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(t):
                keys |= _bool_keys(t, f"{prefix}{name}.")
    return keys


@contextmanager
def field_docstrings() -> Iterator[None]:
    """Field docstrings become ``--help`` while our parser is built and used, and only then: the setting is
    process-wide, and left on it makes every other jsonargparse parser in the process (LightningCLI's, measured
    1.7 s -> 9.9 s for ``nlicot fit --print_config``) slower to build."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    try:
        yield
    finally:
        set_parsing_settings(docstring_parse_attribute_docstrings=False)  # jsonargparse's default


def _parser_class(prog: str | None) -> type[ArgumentParser]:
    """An ArgumentParser whose prog defaults to ours: jsonargparse builds the parser of a nested ``--score.help`` as
    ``type(parser)(description=…)``, which would print ``usage: __main__.py``."""

    class Parser(ArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("prog", prog)
            super().__init__(*args, **kwargs)

    return Parser


def config_parser(cls: type, prog: str | None = None) -> ArgumentParser:
    """``--config FILE``, ``--print_config`` and one flag per field of ``cls`` (dotted for nested configs); build
    it inside ``field_docstrings()``."""
    parser = _parser_class(prog)(description=cls.__doc__, exit_on_error=False, allow_abbrev=False)
    parser.add_argument("--config", action="config", help="YAML file with any of the keys below")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (retries, each poll)")
    parser.add_class_arguments(cls)
    return parser


def parse_config(cls: type, argv: list[str], prog: str | None = None) -> tuple[Any, bool]:
    """``cls`` from the command-line arguments of its own parser (see ``parse_command``)."""
    with field_docstrings():
        return parse_command(config_parser(cls, prog), cls, argv)


def parse_command(parser: ArgumentParser, cls: type, argv: list[str], command: str | None = None) -> tuple[Any, bool]:
    """``cls`` from command-line arguments (``--config FILE`` and flags), the environment, then ``check()``; and
    whether ``--verbose`` was asked for. ``parser`` is ``cls``'s own, or one with ``cls``'s as subcommand
    ``command``; call it inside ``field_docstrings()`` (the help of an optional nested config is built when asked)."""
    flags = flag_keys(argv)  # as typed, before normalising: "--max-tokens abc" is named as "--max-tokens"
    argv = normalise_flags(argv, cls)
    files = [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a == "--config"]
    files += [Path(a.split("=", 1)[1]) for a in argv if a.startswith("--config=")]
    for path in files:
        loaded = read_yaml(path)
        if loaded is not None:
            check_keys(cls, loaded, str(path), extra=("verbose",))
    source = ", ".join(map(str, files)) or "config"
    try:
        values = parser.instantiate(parser.parse_args([command, *argv] if command else argv))
        values = values[command] if command else values
        config = cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})
    except ArgumentError as e:
        raise ConfigError(error_line(e, flags, source)) from None
    except (TypeError, ValueError) as e:  # __post_init__ of a nested value refused it
        raise ConfigError(f"{source}: {one_line(str(e))[1]}") from None
    _server_url_from_env(config, flags)
    try:
        getattr(config, "check", lambda: None)()  # a config without cross-field rules has no check()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return config, bool(values["verbose"])


def _server_url_from_env(config: Any, flags: dict[str, str], prefix: str = "") -> None:
    """``MISTRAL_SERVER_URL`` beats the YAML, a flag beats it; for every (nested) config with ``server_url``."""
    url = os.environ.get(SERVER_URL_ENV)
    if not url:
        return
    if hasattr(config, "server_url") and prefix + "server_url" not in flags:
        config.server_url = url
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            _server_url_from_env(value, flags, f"{prefix}{f.name}.")


def load_config(cls: type, yaml_path: Path | None, overrides: dict[str, Any]) -> Any:
    """The config the CLI would build from ``--config yaml_path`` plus one flag per override (for Python callers)."""
    argv = ["--config", str(yaml_path)] if yaml_path is not None else []
    for key, value in overrides.items():
        argv.append(f"--{key}={value if isinstance(value, (str, Path)) else json.dumps(value)}")  # JSON is YAML
    return parse_config(cls, argv)[0]
