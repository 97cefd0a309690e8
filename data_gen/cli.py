"""``python -m data_gen <stage> [--config FILE] [--flag value ...]`` (also installed as ``nlicot-data``).

Every config key is also a flag (``max_tokens`` -> ``--max-tokens``; booleans take ``--x``/``--no-x``; ``null``
unsets an optional value; mappings take inline YAML such as ``--columns '{label: gold}'``). Flags override the
YAML. Known failures print ``error: …`` without a traceback and exit 2; a run stopped by the budget or left with
a batch job still running exits 3 and resumes when rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import types
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from data_gen.config import coerce, load_config
from data_gen.errors import ConfigError, DataGenError, RequestFailed
from data_gen.stages import build, generate, reflect, score

STAGES: dict[str, ModuleType] = {"generate": generate, "reflect": reflect, "score": score, "build": build}
_NOT_FLAGS = ("stage", "config", "verbose")


class RedactSecrets(logging.Filter):
    """Defence in depth: whatever a log line says, a secret in it is replaced before it is written."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self.redact(record.getMessage()), ()
        return True


_redactor = RedactSecrets()


def _setup_logging(verbose: bool) -> None:
    """Our lines on stderr; the HTTP library's per-request lines stay off."""
    logger = logging.getLogger("data_gen")
    for handler in [h for h in logger.handlers if getattr(h, "_data_gen", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_redactor)
    handler._data_gen = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("httpx2").setLevel(logging.WARNING)


def _field_help(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_gen",
        description="The Reflection-CoT corpus pipeline on the Mistral API: generate -> reflect -> [score] -> build.",
        epilog="Each stage: --config FILE (YAML) and/or one flag per key; see `python -m data_gen <stage> --help`.",
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="{" + ",".join(STAGES) + "}")
    for name, module in STAGES.items():
        cls = module.Config
        p = sub.add_parser(name, help=cls.__doc__, description=cls.__doc__)
        p.add_argument("--config", type=Path, help="YAML file with any of the keys below")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging (retries, each poll)")
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            if typing.get_type_hints(cls)[f.name] is bool:
                p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=_field_help(f))
            else:
                p.add_argument(flag, dest=f.name, metavar="VALUE", default=argparse.SUPPRESS, help=_field_help(f))
    return parser


def _flag_value(text: str, tp: Any, flag: str) -> Any:
    """A flag's text as the field's type: strings and paths stay text, everything else is read as YAML."""
    members = set(typing.get_args(tp)) if typing.get_origin(tp) in (typing.Union, types.UnionType) else {tp}
    optional = type(None) in members
    if optional and text.strip().lower() in ("null", "none", "~"):
        return None
    if members - {type(None)} <= {str, Path}:
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{flag}: cannot read {text!r}") from None
    return coerce(value, tp, flag)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = STAGES[args.stage]
    _setup_logging(args.verbose)
    try:
        hints = typing.get_type_hints(module.Config)
        overrides = {
            k: _flag_value(v, hints[k], "--" + k.replace("_", "-")) if isinstance(v, str) else v
            for k, v in vars(args).items()
            if k not in _NOT_FLAGS
        }
        config = load_config(module.Config, args.config, overrides)
        key_env = getattr(config, "api_key_env", None)
        if key_env and os.environ.get(key_env):
            _redactor.secrets.add(os.environ[key_env])
        return module.main(config)
    except (DataGenError, RequestFailed) as e:
        print(f"error: {_redactor.redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished rows are saved; rerun the same command to resume", file=sys.stderr)
        return 130
