"""How a command fails: one ``error: …`` line the user can act on, exit status 1."""

from __future__ import annotations

from typing import Any

import click


class CliError(click.ClickException):
    """A failure the user can act on: printed as ``error: …``, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)
