"""``python -m data_gen <command> [--config FILE] [--flag value ...]`` (also installed as ``nlicot-data``).

Every config key is also a flag (``--max_tokens`` or ``--max-tokens``; booleans take ``--x`` / ``--no-x`` or
``--x true``; ``null`` unsets an optional value; mappings take inline YAML such as ``--columns '{label: gold}'``;
nested keys of ``run`` are dotted: ``--generate.concurrency 4``). Flags override the YAML; ``--print_config``
prints the merged config as YAML. Exit status (see ``data_gen.errors``): 0 every row done; 2 a usage / config /
input / auth error, printed as one ``error: …`` line; 3 stopped early and resumable by rerunning the same
command; 4 finished with failed rows.
"""

from __future__ import annotations

import logging
import os
import sys
from argparse import ArgumentError
from collections.abc import Callable
from typing import Any

from jsonargparse import ArgumentParser

from data_gen import pipeline
from data_gen.config import config_parser, field_docstrings, parse_command
from data_gen.errors import EXIT_USAGE, DataGenError, RequestFailed, redact
from data_gen.stages import build, generate, reflect, score
from nlicot.offline import synthetic_task

PROG = "python -m data_gen"
#: command -> (config dataclass, entry point ``f(config) -> exit status``).
COMMANDS: dict[str, tuple[type, Callable[[Any], int]]] = {
    "generate": (generate.GenerateConfig, generate.main),
    "reflect": (reflect.ReflectConfig, reflect.main),
    "score": (score.ScoreConfig, score.main),
    "build": (build.BuildConfig, build.main),
    "run": (pipeline.PipelineConfig, pipeline.run),
    "synth": (synthetic_task.SynthConfig, synthetic_task.run),
}


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


def commands_parser() -> ArgumentParser:
    """``python -m data_gen``: one subcommand per command (its help: its config's first docstring line), each with
    its config's flags; build it inside ``field_docstrings()``."""
    parser = ArgumentParser(
        prog=PROG,
        description="The Reflection-CoT corpus pipeline on the Mistral API: generate -> reflect -> [score] -> build, "
        "or all of them with `run`.",
        epilog=f"Each command: --config FILE (YAML) and/or one flag per key; see `{PROG} <command> --help`.",
        exit_on_error=False,
        allow_abbrev=False,
    )
    subcommands = parser.add_subcommands()
    for name, (cls, _) in COMMANDS.items():
        command = config_parser(cls, f"{PROG} {name}")
        subcommands.add_subcommand(name, command, help=(cls.__doc__ or "").split("\n")[0])
        command.prog = f"{PROG} {name}"  # add_subcommand's is "python -m data_gen [options] name"
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        with field_docstrings():
            parser = commands_parser()
            if name is None:  # --help, or no / an unknown command
                parser.parse_args(argv[:1])
            cls, run = COMMANDS[name]
            config, verbose = parse_command(parser, cls, argv[1:], command=name)
        _setup_logging(verbose)
        _redactor.secrets |= _secrets(config)
        return run(config)
    except SystemExit as e:  # --help, --print_config
        return int(e.code or 0)
    except ArgumentError as e:  # no command or an unknown one
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (DataGenError, RequestFailed) as e:
        print(f"error: {_redactor.redact(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished rows are saved; rerun the same command to resume", file=sys.stderr)
        return 130
