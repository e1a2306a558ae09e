"""Every command has help text and appears in the README; every option has help text."""

from __future__ import annotations

import re

import pytest
import typer

from cli import app
from conftest import ROOT

COMMANDS = typer.main.get_command(app).commands
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_cli_has_the_commands_the_issues_name():
    assert {"index", "add", "delete", "verify", "query", "info"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_has_help_and_is_documented(name):
    command = COMMANDS[name]
    assert (command.help or "").strip(), f"bertdex {name} has no help text"
    assert re.search(rf"bertdex {re.escape(name)}\b", README), f"README.md never shows `bertdex {name}`"
    for parameter in command.params:
        if parameter.param_type_name == "option":
            assert (parameter.help or "").strip(), f"bertdex {name} {parameter.opts[0]} has no help text"
