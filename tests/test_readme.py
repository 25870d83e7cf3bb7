"""The README's command lines use flags the command line has (a removed or renamed flag fails here)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from covidlib.__main__ import COMMANDS, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
COMMAND_NAMES = "|".join(COMMANDS)
# a command line of a code block, or an inline code span such as `train --members 2 --folds 5`
LINE = re.compile(rf"^python -m covidlib ({COMMAND_NAMES})\b([^#\n]*)", re.MULTILINE)
SPAN = re.compile(rf"`(?:python -m covidlib )?({COMMAND_NAMES}) (-[^`]*)`")


def _options() -> dict[str, set[str]]:
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return {name: set(parser._option_string_actions) for name, parser in commands.choices.items()}


def _uses(text: str) -> list[tuple[str, str]]:
    """(command, flag) for every flag the README gives a command."""
    found = [*LINE.findall(text), *SPAN.findall(text)]
    return [(command, token.split("=")[0]) for command, rest in found for token in rest.split()
            if token.startswith("-") and token != "-"]


def test_the_finder_sees_code_lines_and_spans_but_not_prose() -> None:
    text = ("python -m covidlib train --out x --val-fraction 0.2  # --not-a-flag in a comment\n"
            "so `train --members 2 --folds 5` took, and `--select-threshold` alone, and train --prose\n")
    assert _uses(text) == [("train", "--out"), ("train", "--val-fraction"), ("train", "--members"), ("train", "--folds")]


def test_every_flag_the_readme_gives_a_command_exists() -> None:
    uses = _uses(README.read_text(encoding="utf-8"))
    assert {command for command, _ in uses} >= {"train", "predict", "evaluate", "segment", "semi"}
    options = _options()
    unknown = sorted({f"{command} {flag}" for command, flag in uses if flag not in options[command]})
    assert not unknown, f"README.md gives flags the command line does not have: {unknown}"


@pytest.mark.parametrize("flag", ["--all-slices", "--no-such-flag"])
def test_a_missing_flag_would_be_caught(flag: str) -> None:
    options = _options()
    assert ("train", flag) in _uses(f"python -m covidlib train --out x {flag}\n")
    assert flag not in options["train"]
