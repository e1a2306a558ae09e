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
    assert f"bertdex {name}" in (command.epilog or ""), f"bertdex {name} --help shows no example"
    assert all(parse(line.strip()) for line in command.epilog.split("\n\n") if line.strip().startswith("bertdex "))
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


# -- every command shown runs (issue 26) ----------------------------------------------------------------


def shown_commands(text: str) -> list[str]:
    """The `bertdex ...` command lines of a page's code blocks (sh / console), continuations joined,
    comments, prompts, environment prefixes and pipes into bertdex taken off."""
    found = []
    for block in re.findall(r"^```(?:sh|bash|console|shell)?\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\$ ", "", line.strip())
            line = line.split("|")[-1].strip() if "| bertdex" in line else line
            line = re.sub(r"^(?:\w+=\S+ )+", "", line)
            if line.startswith("bertdex "):
                found.append(re.sub(r"\s+#.*$", "", line).split(" > ")[0].strip())
    return found


SHOWN = sorted({(page.name, command) for page in PAGES for command in shown_commands(page.read_text(encoding="utf-8"))})


def remaining(context) -> list[str]:
    """What a group left for its subcommand (click keeps the subcommand's name apart)."""
    return [*getattr(context, "_protected_args", []), *context.args]


def parse(command: str):
    """Parse a shown command line as `bertdex` would, without running it: its options, choices, arguments."""
    import shlex

    import typer.main

    from cli import with_ray_default

    group = typer.main.get_command(app)
    args, optional = synopsis(shlex.split(command)[1:])
    args = with_ray_default(args)
    context = group.make_context("bertdex", list(args), resilient_parsing=False)
    name, found, rest = group.resolve_command(context, remaining(context))
    while hasattr(found, "resolve_command"):  # bertdex tutorial NAME
        context = found.make_context(name, rest, parent=context)
        name, found, rest = found.resolve_command(context, remaining(context))
    found.make_context(name, rest, parent=context)
    known = {option for parameter in found.params for option in parameter.opts + parameter.secondary_opts}
    assert [option for option in optional if option not in known] == [], f"{command}: options it does not have"
    return found


def synopsis(words: list[str]) -> tuple[list[str], list[str]]:
    """A usage synopsis's words outside [optional parts], and the options named inside them.

    synopsis(["eval", "DIR", "[--mode", "dense|keyword]", "[--json]"]) -> (["eval", "DIR"], ["--mode", "--json"])
    """
    kept, optional, depth = [], [], 0
    for word in words:
        opening = word.count("[") if word.startswith("[") else 0
        depth += opening
        if depth:
            optional += [name for name in re.findall(r"--[\w-]+", word)]
        else:
            kept.append(word)
        depth = max(0, depth - word.count("]"))
    return kept, optional


@pytest.mark.parametrize("page, command", SHOWN, ids=[f"{page}: {command[:60]}" for page, command in SHOWN])
def test_every_command_shown_parses(page, command):
    """Options that exist, choices that are valid, the arguments a command takes."""
    assert parse(command) is not None


# the README's commands that do not run in the suite, and why
NOT_RUN = {"bertdex serve": "needs a server (tests/test_server.py runs `bertdex serve`)",
           "bertdex tune": "long: it embeds the entries once per candidate model (tests/test_tuning.py)",
           "faq-ko": "long: the Korean model's first conversion (tests/test_default_model.py runs it)"}


@pytest.mark.slow
def test_the_readme_commands_run_in_order(tmp_path):
    """The README's commands, in its order, on a fresh runs/: each exits 0 (grep-like: every question answered)."""
    import shlex

    from test_cli_errors import Driver

    runs = tmp_path / "runs"
    commands = [c for c in shown_commands(README) if not any(mark in c for mark in NOT_RUN)]
    assert len(commands) >= 8
    driver = Driver(tmp_path)
    try:
        for command in commands:
            args = [word.replace("runs/", f"{runs}/", 1) if word.startswith("runs/") else word
                    for word in shlex.split(command)[1:]]
            code, out, err = driver.run([arg.encode() for arg in args], None)
            assert code == 0, f"{command}: exit {code}\n{err}"
    finally:
        driver.close()
