"""Commands from the ``pipeline.commands`` entry points: loaded by name when asked, and one that fails alone."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from importlib.metadata import EntryPoint
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.cli.plugins import ENTRY_POINT_GROUP, PluginGroup

pytestmark = pytest.mark.unit

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@click.command("hello")
@click.option("--name", default="world", help="whom to greet")
def hello(name: str) -> None:
    """Greet NAME."""
    click.echo(f"hello {name}")


not_a_command = "a plain string"


def entry_point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


GOOD = entry_point("hello", f"{__name__}:hello")
BROKEN = entry_point("broken", "tests.unit.no_such_plugin_module:command")


def group_with(*plugins: EntryPoint) -> click.Group:
    def offered() -> Iterable[EntryPoint]:
        return plugins

    @click.group(cls=PluginGroup, plugins=offered)
    def cli() -> None:
        """A group with plugins."""

    @cli.command("own")
    def own() -> None:
        """A command of the group's own."""
        click.echo("own ran")

    return cli


def test_a_plugin_is_listed_and_invoked_like_a_command_of_the_group() -> None:
    cli = group_with(GOOD)
    listing = CliRunner().invoke(cli, ["--help"])
    assert listing.exit_code == 0, listing.output
    assert "hello  Greet NAME." in listing.output
    assert "own    A command of the group's own." in listing.output

    result = CliRunner().invoke(cli, ["hello", "--name", "kafka"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello kafka\n"


def test_a_plugin_that_fails_to_import_leaves_the_other_commands_working() -> None:
    cli = group_with(BROKEN, GOOD)

    own = CliRunner().invoke(cli, ["own"])
    assert (own.exit_code, own.stdout, own.stderr) == (0, "own ran\n", ""), "nothing of the plugin is imported"

    listing = CliRunner().invoke(cli, ["--help"])
    assert listing.exit_code == 0
    assert "hello" in listing.stdout and "own" in listing.stdout and "broken" not in listing.stdout
    assert listing.stderr.count("\n") == 1
    assert listing.stderr.startswith("error: the 'broken' command is unavailable: ")
    assert "tests.unit.no_such_plugin_module:command failed to load: ModuleNotFoundError" in listing.stderr


@pytest.mark.parametrize("args", [["broken"], ["broken", "--help"], ["broken", "--any", "thing"]])
def test_invoking_a_plugin_that_fails_to_import_says_why_on_one_line_and_exits_1(args: list[str]) -> None:
    result = CliRunner().invoke(group_with(BROKEN), args)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: the 'broken' command is unavailable: ")


def test_an_entry_point_that_is_not_a_command_is_refused() -> None:
    result = CliRunner().invoke(group_with(entry_point("odd", f"{__name__}:not_a_command")), ["odd"])
    assert result.exit_code == 1
    assert (
        result.stderr
        == f"error: the 'odd' command is unavailable: {__name__}:not_a_command is a str, not a click command\n"
    )


def test_the_group_s_own_command_wins_over_a_plugin_of_the_same_name() -> None:
    result = CliRunner().invoke(group_with(entry_point("own", f"{__name__}:hello")), ["own"])
    assert result.output == "own ran\n"


def test_an_unknown_command_is_still_refused_by_click() -> None:
    result = CliRunner().invoke(group_with(GOOD), ["nope"])
    assert result.exit_code == 2
    assert "No such command 'nope'" in result.output


def test_pipeline_bench_comes_from_the_entry_point_pyproject_declares(monkeypatch: pytest.MonkeyPatch) -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert declared == {"bench": "bench.cli:bench"}
    monkeypatch.setattr(main, "plugins", lambda: [entry_point(name, value) for name, value in declared.items()])

    listing = CliRunner().invoke(main, ["--help"])
    assert "bench         Measure the raw Kafka ceiling" in listing.stdout

    result = CliRunner().invoke(main, ["bench", "--help"], prog_name="pipeline")
    assert result.exit_code == 0, result.output
    assert "Usage: pipeline bench [OPTIONS]" in result.output
    assert "--stages TEXT" in result.output and "--profile / --no-profile" in result.output

    refused = CliRunner().invoke(main, ["bench", "--stages", "warp"])
    assert refused.exit_code == 2
    assert "choose among raw, faust, pipeline, codec, query" in refused.output
