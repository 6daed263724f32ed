"""Development bearer tokens for the gateway."""

from __future__ import annotations

import click

from common.settings import get_settings
from pipeline.cli.errors import CliError
from streams.domain.text import text_problem


@click.command("token")
@click.option("--subject", "-s", required=True, help="the user id the token speaks for (its sub claim)")
@click.option("--ttl", type=click.IntRange(min=1), default=3600, show_default=True, help="seconds until it expires")
def token_command(subject: str, ttl: int) -> None:
    """Print a development HS256 bearer token for the gateway.

    Signed with the secret the gateway verifies with: PIPELINE_JWT_SECRET, or else the installation's secret
    file (PIPELINE_JWT_SECRET_FILE, default .cache/jwt-secret, written by infra/setup.sh).
    """
    from gateway.auth import AuthConfigError, hs256_secret, issue_token

    settings = get_settings()
    if settings.jwt_algorithm != "HS256":
        raise CliError(f"the gateway expects {settings.jwt_algorithm} tokens; this command signs HS256 dev tokens only")
    if not subject.strip():
        raise CliError("--subject must not be empty")
    if (problem := text_problem(subject)) is not None:
        raise CliError(f"--subject {problem}")
    try:
        secret = hs256_secret(settings)
    except AuthConfigError as exc:
        raise CliError(str(exc)) from exc
    click.echo(
        issue_token(
            subject,
            secret.decode(),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_s=ttl,
        )
    )
