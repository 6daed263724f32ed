"""``pipeline user ID --replay`` without a broker: the user the log gives beside its view, and the exit status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from consumers.user_log import LoadedUser
from pipeline.cli import main
from streams.domain import user_aggregate
from streams.domain.messages import UserLoggedIn, UserRegistered
from streams.views.users import aggregate_view

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
HISTORY = [
    UserRegistered(user_id="u-1", version=1, username="ada", email="a@x.io", registered_at=T0),
    UserLoggedIn(user_id="u-1", version=2, logged_in_at=T0),
]


def loaded(history: list[Any]) -> LoadedUser:
    first = user_aggregate.replay(history[:1])
    snapshot = user_aggregate.take_snapshot(first, T0) if first is not None else None
    return LoadedUser(
        user_id="u-1",
        user=user_aggregate.load(snapshot, history[1:]),
        snapshot=snapshot,
        events_after=tuple(history[1:]),
        partition=4,
        began_at=17,
        snapshot_records=3,
        event_records=6,
        from_start=False,
    )


@pytest.fixture
def replay(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run ``user u-1 --replay`` against a log that gives ``log`` and a view that holds ``view``."""

    def run(log: LoadedUser, view: dict[str, Any] | None, *extra: str) -> Any:
        monkeypatch.setattr("pipeline.cli.queries.query_redis", lambda *a: object())
        monkeypatch.setattr("consumers.user_log.load_user", lambda settings, user_id: log)
        monkeypatch.setattr("streams.views.read.get_user", lambda client, user_id: view)
        return CliRunner().invoke(main, ["user", "u-1", "--replay", *extra])

    return run


def test_a_view_that_agrees_with_the_log_exits_0(replay: Any) -> None:
    log = loaded(HISTORY)
    assert log.user is not None
    result = replay(log, {**aggregate_view(log.user), "onboarding_started_at": 1})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "user u-1 from the log: snapshot v1 (taken 2026-01-05T09:00:00.000Z) + 1 event after it = v2"
    assert lines[1] == "  read 3 records of users.snapshots.v1[4] and 6 of users.events.v1[4] from offset 17"
    assert "  login_count          1                                    1" in lines
    assert lines[-1] == "they agree"


def test_a_view_that_disagrees_exits_1_and_names_the_fields(replay: Any) -> None:
    log = loaded(HISTORY)
    assert log.user is not None
    result = replay(log, {**aggregate_view(log.user), "version": 1, "login_count": 0})
    assert result.exit_code == 1
    assert "≠ login_count          1                                    0" in result.output
    assert "they disagree" in result.output
    assert "error: user 'u-1': the views and the log disagree on login_count, version" in result.output


def test_a_user_only_one_side_holds_disagrees_and_one_neither_holds_is_unknown(replay: Any) -> None:
    missing = replay(loaded(HISTORY), None, "--json")
    assert missing.exit_code == 1 and '"agree": false' in missing.output and '"view": null' in missing.output
    nowhere = replay(loaded([]), None)
    assert nowhere.exit_code == 1 and "error: no user 'u-1' in the log or in the views" in nowhere.output
