"""jsonargparse's error messages as one line: the key and its innermost reason, for nlicot's and data_gen's CLIs.

jsonargparse reports a bad value as a multi-line tree (a Union's per-member errors, a subclass-mode group's
class_path report, ``Given value type`` lines) and prints the command's whole usage in front of it (~70 lines for
``nlicot fit``), so the one line that names the key and the value scrolls away.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, NoReturn

_KEY = re.compile(r'Parser key "([^"]+)":')


def one_line(message: str) -> tuple[str | None, str]:
    """(dotted key or None, innermost reason) of a jsonargparse message, e.g. ``("trainer.max_steps", "expected int,
    got 'abc'")``; nested keys (a subclass-mode ``model:``, an optional nested config) are joined with dots."""
    keys = _KEY.findall(message)
    text = message
    if keys:  # the innermost key's reason: the rest of its line and the lines indented under it
        lines, marker = message.splitlines(), f'Parser key "{keys[-1]}":'
        at = max(i for i, line in enumerate(lines) if marker in line)
        body = itertools.takewhile(lambda line: not line.strip() or _indent(line) > _indent(lines[at]), lines[at + 1 :])
        text = "\n".join([lines[at].split(marker, 1)[1], *body])
    items = re.findall(r"^( *)- (.+(?:\n\1 +(?!- )\S.*)*)", text, re.M)  # a Union's per-member errors: the first
    reason = " ".join((items[0][1] if items else text).split())
    given = re.search(r"^\s*Given value: (.*)$", text, re.M)
    if given and re.fullmatch(r"Expected a <class '\w+'>", reason):  # a Union names the value once, at the end
        reason += f". Got value: {given.group(1)}"
    reason = re.sub(r"Expected a <class '(\w+)'>\. Got value: (.*)", r"expected \1, got '\2'", reason)
    return (".".join(keys) if keys else None), reason


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


class TerseErrors:
    """A jsonargparse ``ArgumentParser`` mixin: an error is its one line (``Parser key "k": reason``) and the
    ``--help`` tip, without the usage screen in front of it."""

    def print_usage(self, file: Any = None) -> None:
        """Only reached from ``error``: ``--help`` prints the full help through ``print_help``."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        key, reason = one_line(message)
        super().error(f'Parser key "{key}": {reason}' if key else message, ex)  # type: ignore[misc]
