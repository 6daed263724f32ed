"""Dead letters: list them with whether their key still waits, replay them once fixed, discard a hopeless one."""

from __future__ import annotations

import json
from typing import Any

import click

from common.settings import get_settings
from pipeline.cli.errors import CliError
from pipeline.cli.reach import kafka_at, require


@click.group()
def dlq() -> None:
    """Dead letters: messages a consumer could not decode or handle, parked in <topic>.dlq with the reason."""


@dlq.command("list")
@click.argument("topics", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per dead letter")
def dlq_list(topics: tuple[str, ...], as_json: bool) -> None:
    """Show the dead letters in TOPICS (dead-letter topics, or their sources; default: all), and whether each
    one's key still waits on it (read from the services' parked-keys changelogs)."""
    from consumers.deadletter import dead_letter_topics, parked_status, read_dead_letters, read_parked_keys

    names = [t if t.endswith(".dlq") else f"{t}.dlq" for t in topics]
    unknown = sorted(set(names) - set(dead_letter_topics()))
    if unknown:
        raise CliError(f"not a dead-letter topic: {', '.join(unknown)}")
    settings = get_settings()
    require(kafka_at(settings))
    letters = read_dead_letters(settings, names or None)
    parked = read_parked_keys(settings)
    for letter in letters:
        status = parked_status(letter, parked) if parked is not None else "unknown"
        if as_json:
            click.echo(json.dumps({**letter.as_dict(), "status": status}, sort_keys=True))
        else:
            behind = f", behind {letter.parked_behind.to_header()}" if letter.parked_behind else ""
            click.echo(
                f"{letter.position}  from {letter.origin.to_header()}"
                f"  key={(letter.key or b'').decode(errors='replace')!r}  by {letter.agent}"
                f" (attempt {letter.attempts}, {letter.parked_at})  [{status}{behind}]\n    {letter.error}"
            )
    if not as_json:
        keys = "unknown" if parked is None else str(len(parked))
        click.echo(f"{len(letters)} dead letter(s); {keys} (agent, key) pair(s) parked", err=True)


@dlq.command("replay")
@click.argument("topic", required=False)
@click.option(
    "--at", "positions", multiple=True, metavar="PARTITION:OFFSET", help="a dead letter of TOPIC to replay (repeatable)"
)
@click.option("--all", "replay_all", is_flag=True, help="every dead letter (of TOPIC, or of every dead-letter topic)")
@click.option("--key", "keys", multiple=True, metavar="KEY", help="every dead letter of this key (repeatable)")
@click.option("--dry-run", is_flag=True, help="show what would be replayed; publish nothing")
def dlq_replay(
    topic: str | None, positions: tuple[str, ...], replay_all: bool, keys: tuple[str, ...], dry_run: bool
) -> None:
    """Publish chosen dead letters back to their source topic, once what failed them is fixed.

    --all and --key send one copy per original message, in the order its key's queue holds them, so a parked
    key drains in one go; a replay the agent sees before its key's head is refused (its dead letter stays:
    run the command again)."""
    from consumers.deadletter import dead_letter_topics, read_dead_letters, read_parked_keys, replay, replay_order

    if sum(map(bool, (positions, replay_all, keys))) != 1:
        raise CliError(
            "choose what to replay: --at PARTITION:OFFSET (repeatable, as `pipeline dlq list` shows), --key KEY"
            " or --all; nothing replayed"
        )
    if positions and topic is None:
        raise CliError("--at needs the TOPIC its positions are in; nothing replayed")
    names = dead_letter_topics()
    if topic is not None:
        name = topic if topic.endswith(".dlq") else f"{topic}.dlq"
        if name not in names:
            raise CliError(f"not a dead-letter topic: {name}")
        names = [name]
    wanted = _positions(positions, "nothing replayed")
    settings = get_settings()
    require(kafka_at(settings))
    letters = read_dead_letters(settings, names)
    if positions:
        chosen = _letters_at(letters, wanted, names[0], "nothing replayed")
    else:
        picked = [letter for letter in letters if replay_all or letter.key_text in keys]
        if keys and not picked:
            raise CliError(f"no dead letter of key {', '.join(map(repr, keys))}; nothing replayed")
        chosen = replay_order(picked, read_parked_keys(settings))
    for letter in chosen:
        click.echo(
            f"{'would replay' if dry_run else 'replaying'} {letter.position} -> {letter.source_topic}"
            f" (key {letter.key_text!r}, origin {letter.origin.to_header()})"
        )
    if not dry_run:
        click.echo(f"replayed {replay(settings, chosen)} message(s)")


def _positions(positions: tuple[str, ...], outcome: str) -> set[tuple[int, int]]:
    """``--at PARTITION:OFFSET`` values, checked before anything is read or sent."""
    wanted: set[tuple[int, int]] = set()
    for position in positions:
        partition, _, offset = position.partition(":")
        if not (partition.isdigit() and offset.isdigit()):
            raise CliError(f"--at takes PARTITION:OFFSET, not {position!r}; {outcome}")
        wanted.add((int(partition), int(offset)))
    return wanted


def _letters_at(letters: list[Any], wanted: set[tuple[int, int]], name: str, outcome: str) -> list[Any]:
    """The dead letters at ``wanted``; every position must hold one."""
    chosen = [letter for letter in letters if (letter.partition, letter.offset) in wanted]
    missing = sorted(wanted - {(letter.partition, letter.offset) for letter in chosen})
    if missing:
        raise CliError(f"no dead letter at {', '.join(f'{p}:{o}' for p, o in missing)} of {name}; {outcome}")
    return chosen


@dlq.command("discard")
@click.argument("topic")
@click.option(
    "--at", "positions", multiple=True, required=True, metavar="PARTITION:OFFSET",
    help="a dead letter of TOPIC whose parked original is dropped (repeatable)",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="show what would be discarded; publish nothing")
def dlq_discard(topic: str, positions: tuple[str, ...], dry_run: bool) -> None:
    """Give up on a parked message that no fix will make handleable (bytes that never decode, say).

    Its agent drops it from its key's queue unhandled, so the key's next parked message becomes head (replay
    it with ``pipeline dlq replay --key KEY``). Only a key's head can be discarded; the dead letter itself stays
    on its topic as the record of what was given up."""
    from consumers.deadletter import dead_letter_topics, read_dead_letters, replay

    name = topic if topic.endswith(".dlq") else f"{topic}.dlq"
    if name not in dead_letter_topics():
        raise CliError(f"not a dead-letter topic: {name}")
    wanted = _positions(positions, "nothing discarded")
    settings = get_settings()
    require(kafka_at(settings))
    chosen = _letters_at(read_dead_letters(settings, [name]), wanted, name, "nothing discarded")
    for letter in chosen:
        click.echo(
            f"{'would discard' if dry_run else 'discarding'} {letter.position}"
            f" (key {letter.key_text!r}, origin {letter.origin.to_header()}, parked by {letter.agent})"
        )
    if not dry_run:
        click.echo(f"sent {replay(settings, chosen, discard=True)} discard(s) to {chosen[0].source_topic}")
