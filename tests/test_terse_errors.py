"""A bad value is one ``error:`` line naming the dotted key and the innermost reason, without the usage screen."""

from __future__ import annotations

from typing import Literal

import pytest
from jsonargparse import ArgumentParser

from nlicot.terse_errors import TerseErrors


class Module:
    def __init__(self, optimizer: Literal["adamw", "sgd"] = "adamw", steps: int = 1) -> None:
        self.optimizer, self.steps = optimizer, steps


class Parser(TerseErrors, ArgumentParser):
    pass


@pytest.mark.parametrize(
    ("flag", "line"),
    [
        ("--model.optimizer=foo", """error: Parser key "model.optimizer": Expected a typing.Literal['adamw', 'sgd']. Got value: foo"""),
        ("--model.steps=abc", """error: Parser key "model.steps": expected int, got 'abc'"""),
        ("--size=x", """error: Parser key "size": expected int, got 'x'"""),
        ("--seed=x", """error: Parser key "seed": expected int, got 'x'"""),  # a Union names the value at the end
        ("--model=nowhere.Module",  # a blank line after the key
         """error: Parser key "model": Expected a path but nowhere.Module either not accessible or invalid"""),
    ],
)
def test_a_bad_value_is_one_line_and_the_help_tip(capsys, flag, line):
    parser = Parser(prog="prog")
    parser.add_argument("--size", type=int, default=1)
    parser.add_argument("--seed", type=int | None, default=None)
    parser.add_subclass_arguments(Module, "model", required=False)  # a bad init_arg: a 10-line Union report
    with pytest.raises(SystemExit) as e:
        parser.parse_args([f"--model={Module.__module__}.Module", flag])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and lines == ["tip: For details of accepted options run: prog --help", line]
