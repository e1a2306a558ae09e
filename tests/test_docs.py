"""Every command has help text and appears in the README or a docs/ page; every option has help text; the
commands shown name files that exist and write only under runs/ (ignored by git); relative links resolve."""

from __future__ import annotations

import re

import pytest
import typer

from cli import app
from conftest import ROOT

TOP = typer.main.get_command(app).commands
# `bertdex NAME` and `bertdex tutorial NAME`; hidden commands are old names kept for one version
COMMANDS = {name: command for name, command in TOP.items() if not command.hidden and name != "tutorial"}
COMMANDS.update({f"tutorial {name}": command for name, command in TOP["tutorial"].commands.items()})
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
README_COMMANDS = re.findall(r"^(?:\$ )?(?:\w+=\S+ )?(bertdex .+?)(?:\s+#.*)?$", DOCS, flags=re.MULTILINE)


def test_the_cli_has_the_commands_the_issues_name():
    assert {"index", "add", "delete", "verify", "query", "info", "duplicates", "tutorial tokens"} <= set(COMMANDS)


def test_old_tutorial_names_are_hidden_aliases():
    assert {name for name, command in TOP.items() if command.hidden} == set(TOP["tutorial"].commands)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_has_help_and_is_documented(name):
    command = COMMANDS[name]
    assert (command.help or "").strip(), f"bertdex {name} has no help text"
    assert re.search(rf"bertdex {re.escape(name)}\b", DOCS), f"neither README.md nor docs/ shows `bertdex {name}`"
    for parameter in command.params:
        if parameter.param_type_name == "option":
            assert (parameter.help or "").strip(), f"bertdex {name} {parameter.opts[0]} has no help text"


def test_readme_names_example_files_that_exist():
    named = set(re.findall(r"\bexamples/[\w./-]+\w", DOCS))
    assert named and [path for path in sorted(named) if not (ROOT / path).exists()] == []


def test_readme_commands_write_under_runs():
    assert README_COMMANDS, "no bertdex command found in README.md"
    written = []
    for line in README_COMMANDS:
        words = line.split()
        if words[1] in ("index", "add", "query", "duplicates", "info", "verify", "delete", "serve", "eval", "tune", "calibrate"):
            written.append(words[2])  # the index folder, first everywhere
        written += [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("--out", "-o", "--histogram", "--plot")]
    outside = [path for path in written if not path.startswith(("runs/", "DIR", "examples/"))]
    assert outside == []
    assert "/runs/" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def test_readme_is_a_short_door():
    assert len(README.splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'<img src="([^"]+)"', text)
    broken = []
    for target in targets:
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#")[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert broken == [], f"{page.name}: links to missing files"
