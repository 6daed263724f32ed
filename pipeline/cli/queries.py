"""The query side from the terminal: an order's view and saga waterfall, a SKU's stock, a user; rebuilding views."""

from __future__ import annotations

import json
from typing import Any

import click

from common.health import redacted_url
from common.settings import Settings, get_settings
from pipeline.cli.errors import CliError
from pipeline.cli.reach import Dependency, kafka_at, redis_at, require


def ms_iso(ms: Any) -> str:
    """Epoch milliseconds as RFC 3339 UTC text; '-' when absent."""
    from datetime import UTC, datetime

    if not isinstance(ms, int):
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def query_redis(settings: Settings, *also: Dependency) -> Any:
    """A client of the query side's Redis, once it (and what else the command needs) answers."""
    import redis

    require(redis_at(settings.redis_url), *also)
    return redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=5)


def not_projected(what: str, settings: Settings) -> CliError:
    return CliError(
        f"no {what} in the views at {redacted_url(settings.redis_url)} (is `pipeline worker views` running?)"
    )


@click.group()
def views() -> None:
    """The query side's Redis views (view:*), mirrored from the view service's tables (`pipeline worker views`)."""


@views.command("rebuild")
@click.option("--from-log", is_flag=True,
              help="rebuild the view tables from the event topics (the view service must be stopped)")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="seconds to wait for the view service to re-mirror")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print the counts as one JSON object")
def views_rebuild(from_log: bool, timeout: float, as_json: bool) -> None:
    """Drop every view:* key; the running view service writes them again from its tables (O(keys)).

    With --from-log, reset the view service instead (stop `pipeline worker views` first): its consumer group and
    table changelogs are deleted, so when it starts again it folds every event from the log into new tables and
    mirrors them.
    """
    from consumers.view_log import count_views, drop_views

    settings = get_settings()
    client = query_redis(settings, kafka_at(settings))
    if from_log:
        reset = reset_view_service(settings)
        dropped = drop_views(client)
        counts = {"dropped_keys": dropped, **reset}
        click.echo(json.dumps(counts) if as_json else (
            f"dropped {dropped} view keys; deleted group {reset['group']} and {len(reset['topics'])} topics of the"
            " view service; start `pipeline worker views`: it folds the log from the start and mirrors it"
        ))  # fmt: skip
        return
    import time

    from streams.views.read import views_whole

    started = time.monotonic()
    dropped = drop_views(client)
    while not views_whole(client):
        if time.monotonic() - started > timeout:
            raise CliError(f"dropped {dropped} view keys, but no view service re-mirrored them within {timeout:.0f}s"
                           " (is `pipeline worker views` running?)")  # fmt: skip
        time.sleep(0.2)
    counts = {
        "dropped_keys": dropped,
        "view_keys": count_views(client),
        "seconds": round(time.monotonic() - started, 3),
    }
    click.echo(json.dumps(counts) if as_json else (
        f"dropped {dropped} view keys; the view service re-mirrored {counts['view_keys']} in {counts['seconds']} s"
    ))  # fmt: skip


def reset_view_service(settings: Settings) -> dict[str, Any]:
    """Delete the view service's consumer group and empty its own topics (table changelogs, stock lines).

    Refused while the group has members: a running view service would write over what is reset."""
    from confluent_kafka.admin import AdminClient

    from common.admin import admin_client
    from schemas.topics import TABLES, VIEWS_STOCK_LINES
    from streams.app import app_id

    group = app_id("views")
    admin: AdminClient = admin_client(settings)
    described = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    if described.members:
        raise CliError(f"the view service is running ({len(described.members)} members in {group}): stop it first")
    topics = [t.changelog for t in TABLES if t.service == "views"] + [VIEWS_STOCK_LINES.name]
    existing = set(admin.list_topics(timeout=10).topics)
    if str(described.state).rsplit(".", 1)[-1] != "DEAD":
        admin.delete_consumer_groups([group], request_timeout=10)[group].result()
    doomed = [t for t in topics if t in existing]
    for future in admin.delete_topics(doomed, operation_timeout=30).values():
        future.result()
    from common.admin import all_topics

    specs = [spec for spec in all_topics() if spec.name in topics]
    _recreate(admin, settings, specs)
    return {"group": group, "topics": topics}


def _recreate(admin: Any, settings: Settings, specs: list[Any]) -> None:
    """Create the deleted topics again (the broker may take a moment to forget them)."""
    import time

    from common.admin import apply_topics

    deadline = time.monotonic() + 60
    while True:
        try:
            apply_topics(admin, settings, specs)
            return
        except Exception as exc:  # noqa: BLE001 - "marked for deletion" until the broker finished
            if time.monotonic() > deadline:
                raise CliError(f"could not create the view service's topics again: {exc}") from exc
            time.sleep(0.5)


@click.command("order")
@click.argument("order_id")
@click.option("--json", "as_json", is_flag=True, help="print the view as JSON")
def order_view(order_id: str, as_json: bool) -> None:
    """Print ORDER_ID's view and its saga timeline from Redis."""
    from streams.views.read import get_order

    settings = get_settings()
    view = get_order(query_redis(settings), order_id)
    if view is None:
        raise not_projected(f"order {order_id!r}", settings)
    if as_json:
        click.echo(json.dumps(view, indent=2, sort_keys=True))
        return
    lines = view.get("lines") or []
    click.echo(f"order {view['order_id']}  {view.get('status') or '(no status yet)'}")
    click.echo(f"  user        {view.get('user_id') or '-'}")
    click.echo(f"  total       {view.get('total_cents')} cents {view.get('currency') or ''}")
    for line in lines:
        click.echo(f"  line        {line['sku']} x{line['quantity']} @ {line['unit_price_cents']}")
    click.echo(f"  placed      {ms_iso(view.get('placed_at'))}   deadline {ms_iso(view.get('deadline_at'))}")
    click.echo(
        f"  payment     {view.get('payment_id') or '-'}   charged {view.get('charged_cents')}"
        f"   refunded {view.get('refunded_cents')}"
    )
    if view.get("cancel_reason"):
        click.echo(f"  reason      {view['cancel_reason']}")
    if view.get("compensation"):
        comp = view["compensation"]
        state = "OPEN - needs attention" if view.get("needs_attention") else f"resolved {ms_iso(comp['resolved_at'])}"
        click.echo(f"  compensation failed at {comp.get('failed_step')}: {comp.get('reason')} ({state})")
    click.echo("timeline:")
    for entry in view.get("timeline", []):
        detail = " ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(entry["detail"].items()))
        click.echo(f"  {ms_iso(entry['at'])}  {entry['event']:<26} {entry['service'] or '-':<14} {detail}")


@click.command("trace")
@click.argument("order_id")
@click.option("--width", type=click.IntRange(min=10), default=40, show_default=True, help="width of the bars")
@click.option("--json", "as_json", is_flag=True, help="the steps as one JSON object, offsets and gaps in ms")
def trace_view(order_id: str, width: int, as_json: bool) -> None:
    """Show ORDER_ID's saga as a waterfall: each step's service, event and time since the order began."""
    from streams.views.read import get_order

    settings = get_settings()
    view = get_order(query_redis(settings), order_id)
    if view is None:
        raise not_projected(f"order {order_id!r}", settings)
    if as_json:
        doc = {"order_id": order_id, "status": view.get("status"), "cancel_reason": view.get("cancel_reason"),
               "steps": trace_steps(view.get("timeline") or [])}  # fmt: skip
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    for line in waterfall(view.get("timeline") or [], width):
        click.echo(line)
    click.echo(
        f"{order_id}: {view.get('status')}" + (f" ({view['cancel_reason']})" if view.get("cancel_reason") else "")
    )


def trace_steps(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The waterfall's numbers: each step's time, offset from the first event and gap since the step before."""
    if not timeline:
        return []
    start = previous = int(timeline[0]["at"])
    steps = []
    for entry in timeline:
        at = int(entry["at"])
        steps.append({"at": at, "offset_ms": at - start, "gap_ms": at - previous,
                      "service": entry.get("service"), "event": entry["event"]})  # fmt: skip
        previous = at
    return steps


def waterfall(timeline: list[dict[str, Any]], width: int) -> list[str]:
    """One row per saga step: offset from the first event, the gap since the step before, and a bar."""
    if not timeline:
        return ["(no events yet)"]
    start = int(timeline[0]["at"])
    total = max(1, int(timeline[-1]["at"]) - start)
    rows, previous = [], start
    for entry in timeline:
        at = int(entry["at"])
        begin = round((previous - start) / total * width)
        end = max(begin + 1, round((at - start) / total * width))
        bar = " " * begin + "█" * (end - begin)
        rows.append(
            f"{at - start:>7} ms {'+' + str(at - previous):>8} ms  {str(entry.get('service') or '-'):<13} "
            f"{entry['event']:<26} |{bar:<{width}}|"
        )
        previous = at
    return rows


@click.command("stock")
@click.argument("sku")
@click.option("--json", "as_json", is_flag=True, help="print the view as JSON")
def stock_view(sku: str, as_json: bool) -> None:
    """Print SKU's stock view (available, reserved, sold, stock_version) from Redis."""
    from streams.views.read import stock

    settings = get_settings()
    view = stock(query_redis(settings), sku)
    if view is None:
        raise CliError(f"no stock view for SKU {sku!r} at {redacted_url(settings.redis_url)}")
    if as_json:
        click.echo(json.dumps(view, indent=2, sort_keys=True))
        return
    click.echo(
        f"{view['sku']}  available={view['available']} reserved={view['reserved']} sold={view['sold']}"
        f"  version={view['stock_version']}  last={view.get('last_event', '-')} at {ms_iso(view.get('updated_at'))}"
    )


@click.command("user")
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True, help="print the view as JSON")
@click.option("--replay", is_flag=True,
              help="load the user from the log (newest snapshot + the events after it) and compare it with the view;"
                   " exit 1 if they disagree")  # fmt: skip
def user_view(user_id: str, as_json: bool, replay: bool) -> None:
    """Print USER_ID's view (profile, e-mail, version, stats) and refused commands from Redis.

    With --replay, load USER_ID from the topics as the event store does (its newest UserSnapshot, then only the
    events after it) and print it beside the view: every field the aggregate holds, and whether the two agree.
    """
    from streams.views.read import get_user, user_rejections, user_stats

    settings = get_settings()
    if replay:
        replay_user(settings, user_id, as_json)
        return
    client = query_redis(settings)
    view = get_user(client, user_id)
    if view is None:
        raise not_projected(f"user {user_id!r}", settings)
    stats, refused = user_stats(client, user_id), user_rejections(client, user_id)
    if as_json:
        click.echo(json.dumps({"user": view, "stats": stats, "rejections": refused}, indent=2, sort_keys=True))
        return
    state = "active" if view.get("active") else f"inactive ({view.get('deactivation_reason') or '-'})"
    click.echo(f"user {view['user_id']}  {view.get('username')}  <{view.get('email')}>  {state}  v{view['version']}")
    click.echo(f"  registered  {ms_iso(view.get('registered_at'))}   updated {ms_iso(view.get('updated_at'))}")
    click.echo(f"  logins      {stats['login_count'] if stats else 0}   last {ms_iso(view.get('last_login_at'))}")
    click.echo(f"  orders      {stats['orders_placed'] if stats else 0}")
    for name, value in sorted((view.get("profile") or {}).items()):
        click.echo(f"  profile     {name} = {value}")
    for entry in refused:
        click.echo(f"  refused     {entry['command']}: {entry['reason']}  ({ms_iso(entry.get('rejected_at'))})")


def replay_user(settings: Settings, user_id: str, as_json: bool) -> None:
    """``user ID --replay``: the user loaded from the log beside its view; CliError when they disagree."""
    from consumers.user_log import load_user
    from streams.domain.user_aggregate import HistoryError
    from streams.views.read import get_user
    from streams.views.users import aggregate_view, disagreements

    client = query_redis(settings, kafka_at(settings))
    try:
        loaded = load_user(settings, user_id)
    except HistoryError as exc:
        raise CliError(f"the log's events of user {user_id!r} are not a history: {exc}") from exc
    view = get_user(client, user_id)
    if loaded.user is None and view is None:
        raise CliError(f"no user {user_id!r} in the log or in the views")
    logged = aggregate_view(loaded.user) if loaded.user is not None else None
    differ = disagreements(view, loaded.user)
    read = {
        "partition": loaded.partition,
        "snapshot_version": loaded.snapshot.version if loaded.snapshot else None,
        "events_after": len(loaded.events_after),
        "snapshot_records": loaded.snapshot_records,
        "event_records": loaded.event_records,
        "began_at": loaded.began_at,
        "from_start": loaded.from_start,
    }
    if as_json:
        click.echo(json.dumps({"log": logged, "view": view, "read": read, "agree": not differ,
                               "differences": sorted(differ)}, indent=2, sort_keys=True))  # fmt: skip
    else:
        for line in replay_lines(user_id, loaded.snapshot, read, logged, view, differ):
            click.echo(line)
    if differ:
        raise CliError(f"user {user_id!r}: the views and the log disagree on {', '.join(sorted(differ))}")


def replay_lines(
    user_id: str,
    snapshot: Any,
    read: dict[str, Any],
    logged: dict[str, Any] | None,
    view: dict[str, Any] | None,
    differ: dict[str, Any],
) -> list[str]:
    """The text of ``user ID --replay``: how the user was loaded, then each aggregate field, log beside view."""
    from streams.views.users import AGGREGATE_FIELDS

    p, events = read["partition"], read["events_after"]
    if snapshot is None:
        source = f"no snapshot; {events} events from the start"
    else:
        taken = snapshot.taken_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        source = f"snapshot v{snapshot.version} (taken {taken}) + {events} event{'s' * (events != 1)} after it"
    lines = [
        f"user {user_id} from the log: {source}" + (f" = v{logged['version']}" if logged else ", no user"),
        f"  read {read['snapshot_records']} records of users.snapshots.v1[{p}] and {read['event_records']} of "
        f"users.events.v1[{p}] from offset {read['began_at']}" + (" (its start)" if read["from_start"] else ""),
        f"user {user_id} in the views: " + (f"v{view.get('version')}" if view else "none"),
        f"  {'field':<20} {'log':<36} view",
    ]

    def shown(doc: dict[str, Any] | None, name: str) -> str:
        if doc is None:
            return "-"
        value = doc.get(name)
        return ms_iso(value) if name.endswith("_at") and value is not None else json.dumps(value, sort_keys=True)

    for name in AGGREGATE_FIELDS:
        mark = "≠" if name in differ else " "
        lines.append(f"{mark} {name:<20} {shown(logged, name):<36} {shown(view, name)}")
    lines.append("they disagree" if differ else "they agree")
    return lines
