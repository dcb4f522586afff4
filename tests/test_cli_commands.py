"""The ``copilotd`` group: its subcommands load lazily, yet every one is listed and runs."""

from __future__ import annotations

import re

import click

from copilotd.cli.main import SUBCOMMANDS, main
from tests.support.cli import copilotd, ok


def test_help_lists_every_subcommand_with_its_summary() -> None:
    listed = ok(copilotd(None, "--help")).split("Commands:", 1)[1]
    names = [line.split()[0] for line in listed.splitlines() if re.match(r"  \S", line)]
    assert names == sorted([*SUBCOMMANDS, "serve"])
    assert "Whether the daemon runs" in listed  # a summary, read from the loaded module


def test_each_lazy_subcommand_names_the_command_it_loads() -> None:
    context = click.Context(main)
    for name in SUBCOMMANDS:
        command = main.get_command(context, name)
        assert isinstance(command, click.Command) and command.name == name


def test_an_unknown_subcommand_is_one_line() -> None:
    result = copilotd(None, "nosuch")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "copilotd: No such command 'nosuch'. (see `python -m copilotd --help`)"
    ]
