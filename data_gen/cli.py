"""``python -m data_gen <command> [--config FILE] [--flag value ...]`` (also installed as ``nlicot-data``).

Every config key is also a flag (``--max_tokens`` or ``--max-tokens``; booleans take ``--x`` / ``--no-x`` or
``--x true``; ``null`` unsets an optional value; mappings take inline YAML such as ``--columns '{label: gold}'``;
nested keys of ``run`` are dotted: ``--generate.concurrency 4``). Flags override the YAML; ``--print_config``
prints the merged config as YAML. Exit status (see ``data_gen.errors``): 0 every row done; 2 a usage / config /
input / auth error, printed as one ``error: …`` line; 3 stopped early and resumable by rerunning the same
command; 4 finished with failed rows.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from data_gen.config import parse_config
from data_gen.errors import EXIT_USAGE, DataGenError, RequestFailed, redact

#: command -> (module, config dataclass, entry point ``f(config) -> exit status``); imported only when run.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "generate": ("data_gen.stages.generate", "GenerateConfig", "main"),
    "reflect": ("data_gen.stages.reflect", "ReflectConfig", "main"),
    "score": ("data_gen.stages.score", "ScoreConfig", "main"),
    "build": ("data_gen.stages.build", "BuildConfig", "main"),
    "run": ("data_gen.pipeline", "PipelineConfig", "run"),
    "synth": ("nlicot.offline.synthetic_task", "SynthConfig", "run"),
}


def command(name: str) -> tuple[type, Callable[[Any], int]]:
    """The config class and entry point of one command."""
    module_name, config_name, entry = COMMANDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, entry)


class RedactSecrets(logging.Filter):
    """Defence in depth: whatever a log line says, a secret in it is replaced before it is written."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

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


def _secrets(config: Any) -> set[str]:
    """The API keys a config (or any stage config inside it) reads from the environment."""
    names = {getattr(config, "api_key_env", None)} | {getattr(v, "api_key_env", None) for v in vars(config).values()}
    return {os.environ[n] for n in names if n and os.environ.get(n)}


def _commands_parser() -> argparse.ArgumentParser:
    """``python -m data_gen --help``: the commands and what each does (its config's first docstring line)."""
    parser = argparse.ArgumentParser(
        prog="python -m data_gen",
        description="The Reflection-CoT corpus pipeline on the Mistral API: generate -> reflect -> [score] -> build, "
        "or all of them with `run`.",
        epilog="Each command: --config FILE (YAML) and/or one flag per key; see `python -m data_gen <command> --help`.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS:
        sub.add_parser(name, help=(command(name)[0].__doc__ or "").split("\n")[0])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        try:
            _commands_parser().parse_args(argv[:1])
        except SystemExit as e:
            return int(e.code or 0)
    name, rest = argv[0], argv[1:]
    try:
        cls, run = command(name)
        config, verbose = parse_config(cls, rest, prog=f"python -m data_gen {name}")
        _setup_logging(verbose)
        _redactor.secrets |= _secrets(config)
        return run(config)
    except SystemExit as e:  # --help, --print_config
        return int(e.code or 0)
    except (DataGenError, RequestFailed) as e:
        print(f"error: {_redactor.redact(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished rows are saved; rerun the same command to resume", file=sys.stderr)
        return 130
