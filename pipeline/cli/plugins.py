"""Commands other installed packages add to ``pipeline``, declared in the ``pipeline.commands`` entry-point group.

The benchmark sits beside the CLI rather than under it (``bench = "bench.cli:bench"`` in pyproject.toml), so the
shipped CLI never imports it. A plugin is imported only when it is invoked or listed: a plugin whose package or
optional dependencies are missing costs the other commands nothing, and says so on one line of stderr.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click

ENTRY_POINT_GROUP = "pipeline.commands"


def installed_plugins() -> list[EntryPoint]:
    """The entry points of every installed distribution in ``pipeline.commands``."""
    return list(entry_points(group=ENTRY_POINT_GROUP))


class PluginLoadError(Exception):
    """An entry point that does not yield a click command: its module fails to import, or it names something else."""


def load_plugin(entry_point: EntryPoint) -> click.Command:
    """Import the command ``entry_point`` names; raise :class:`PluginLoadError` saying why it cannot be had."""
    try:
        command = entry_point.load()
    except Exception as exc:  # an import error, or any error raised while the plugin's module runs
        raise PluginLoadError(f"{entry_point.value} failed to load: {type(exc).__name__}: {exc}") from exc
    if not isinstance(command, click.Command):
        raise PluginLoadError(f"{entry_point.value} is a {type(command).__name__}, not a click command")
    return command


def _unavailable(name: str) -> click.Command:
    """Stands in for a plugin that failed to load: takes any arguments and exits 1 (the reason is printed already)."""

    def fail() -> None:
        raise click.exceptions.Exit(1)

    return click.Command(
        name,
        callback=fail,
        hidden=True,  # left out of the command list
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


class PluginGroup(click.Group):
    """A group whose commands are its own plus the plugins, each plugin imported only when it is asked for.

    ``plugins`` returns the entry points to offer (the installed ones by default; tests pass their own). A command
    of the group's own wins over a plugin of the same name.
    """

    def __init__(self, *args: Any, plugins: Callable[[], Iterable[EntryPoint]] = installed_plugins, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.plugins = plugins

    def _plugin_entry_points(self) -> dict[str, EntryPoint]:
        found: dict[str, EntryPoint] = {}
        for entry_point in self.plugins():
            if entry_point.name not in self.commands:
                found.setdefault(entry_point.name, entry_point)
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self._plugin_entry_points()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The group's own command, else the plugin's; a plugin that fails to load is reported on one line of
        stderr (when listed and when invoked) and replaced by a hidden command that exits 1."""
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        entry_point = self._plugin_entry_points().get(cmd_name)
        if entry_point is None:
            return None
        try:
            return load_plugin(entry_point)
        except PluginLoadError as exc:
            click.echo(f"error: the {cmd_name!r} command is unavailable: {exc}", err=True)
            return _unavailable(cmd_name)
