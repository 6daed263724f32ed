"""Which agents each service runs, on which topics, with which table: the wiring of :mod:`streams.domain`.

=============  ===================  ==============================================  =======================
service        agent                consumes                                        table (key)
=============  ===================  ==============================================  =======================
orders         admit_orders         users.events.v1, orders.commands.v1             orders_customers (user)
                                                                                    + orders_admission_holds
orders         run_order_sagas      orders.events.v1, inventory.events.v1,          orders_sagas (order)
                                    payments.events.v1, orders.deadlines.v1         + orders_deadlines
inventory      reserve_inventory    orders.events.v1, inventory.events.v1           inventory_reservations
inventory      keep_stock           inventory.commands.v1                           inventory_stock (SKU)
                                                                                    + inventory_holds
payments       settle_payments      orders.events.v1, inventory.events.v1,          payments_payments
                                    payments.commands.v1 (its timer's retries)      + payments_parked
notifications  notify_customers     orders.events.v1                                notifications_notices
notifications  deliver_notices      notifications.events.v1, users.events.v1        notifications_mailboxes
               (only with PIPELINE_SMTP_HOST set: e-mails the notices)          (user)
users          handle_user_commands users.commands.v1 (commands and claim answers)  users_users (user)
users          own_emails           users.emails.v1                                 users_emails (e-mail)
users          react_to_user_events users.events.v1                                 users_reactions (user)
=============  ===================  ==============================================  =======================

Every source topic has the same partition count and every key is the id the table is keyed by, so Faust's
co-partitioned assignment gives each worker matching partitions of its inputs and its tables.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import redis.asyncio as aioredis

from common.settings import Settings
from schemas.codec import AvroCodec
from schemas.topics import (
    INVENTORY_COMMANDS,
    INVENTORY_EVENTS,
    NOTIFICATION_EVENTS,
    ORDER_COMMANDS,
    ORDER_DEADLINES,
    ORDER_EVENTS,
    PAYMENT_COMMANDS,
    PAYMENT_EVENTS,
    USER_COMMANDS,
    USER_EMAILS,
    USER_EVENTS,
    TopicSpec,
    table,
)
from streams.agents import ServiceApp, register_step
from streams.app import new_table
from streams.checks import provider_check
from streams.domain import orders, payments
from streams.domain.core import (
    ChargeOutcome,
    ChargePayment,
    Decision,
    RefundOutcome,
    RefundPayment,
    SagaConfig,
    StepContext,
    UsersConfig,
)
from streams.domain.mail import MailConfig
from streams.domain.messages import (
    Message,
    OrderDeadlineReached,
    ReleaseHeldOrders,
    RetryPayment,
    from_record,
    to_record,
)
from streams.domain.saga import (
    ADMISSION,
    DELIVERIES,
    EMAILS,
    NOTIFICATIONS,
    ORDER_SAGA,
    PAYMENTS,
    RESERVATIONS,
    STOCK,
    USER_REACTIONS,
    USERS,
    Service,
)
from streams.due import Due, DueIndex, active_partitions, report_due, written_partition
from streams.incoming import Incoming
from streams.mailer import MailDelivery
from streams.outbox import Outbox
from streams.payment_provider import PROBE_TIMEOUT_S as PROVIDER_PROBE_TIMEOUT_S
from streams.payment_provider import ProviderBehaviour, ProviderUnavailable, SimulatedPaymentProvider
from streams.resilience import BreakerState, CircuitBreaker, CircuitOpen, RetryPolicy, retry
from streams.runner import Step
from streams.stores import CustomerStore, StockStore
from streams.view_service import wire_views

T = TypeVar("T")

DEADLINE_RESEND_S = 5.0
"""A parked charge already asked for again is asked for again after this long if it is still parked."""
SWEEP_MAX_REPORTS = 2000
"""Most deadlines (and most customers' held orders) one sweep reports; the rest are next, a sweep later."""


def saga_config(settings: Settings) -> SagaConfig:
    return SagaConfig(
        saga_timeout=timedelta(seconds=settings.saga_timeout_s),
        admission_hold=timedelta(seconds=settings.admission_hold_s),
        max_refund_attempts=settings.max_refund_attempts,
        refund_backoff_base=timedelta(seconds=settings.refund_backoff_base_s),
        refund_backoff_cap=timedelta(seconds=settings.refund_backoff_cap_s),
    )


def _step(
    agent: str,
    service: Service[Any],
    config: SagaConfig,
    *,
    run_effects: Callable[..., Any] | None = None,
    after_write: Callable[[str, Any], None] | None = None,
    users: UsersConfig | None = None,
    mail: MailConfig | None = None,
) -> Step:
    users_config = users or UsersConfig()
    mail_config = mail or MailConfig()

    def context(incoming: Incoming, trace: str) -> StepContext:
        return StepContext(
            now=datetime.now(UTC),
            config=config,
            message_id=incoming.event_id,
            users=users_config,
            mail=mail_config,
            trace=trace,
        )

    return Step(
        agent=agent,
        handles=service.handles,
        decide=service.decide,
        load_state=service.load,
        message_from_record=from_record,
        message_to_record=to_record,
        context=context,
        run_effects=run_effects,
        after_write=after_write,
    )


def _add(built: ServiceApp, codec: AvroCodec, step: Step, sources: tuple[TopicSpec, ...], table_name: str) -> None:
    t = new_table(built.app, table(built.name, table_name))
    built.tables[table_name] = t
    register_step(built, step, sources, t, codec)


def wire(built: ServiceApp, settings: Settings, codec: AvroCodec) -> None:
    """Register ``built.name``'s tables, agents and timers on its Faust app."""
    config = saga_config(settings)
    wiring = {
        "orders": _wire_orders,
        "inventory": _wire_inventory,
        "payments": _wire_payments,
        "notifications": _wire_notifications,
        "users": _wire_users,
        "views": _wire_views,
    }
    wiring[built.name](built, settings, codec, config)


def _wire_views(built: ServiceApp, settings: Settings, codec: AvroCodec, config: SagaConfig) -> None:
    wire_views(built, settings, codec)


def _wire_orders(built: ServiceApp, settings: Settings, codec: AvroCodec, config: SagaConfig) -> None:
    holds = new_table(built.app, table("orders", "orders_admission_holds"))
    built.tables["orders_admission_holds"] = holds
    held = DueIndex(holds)

    def track_held_orders(user_id: str, state: Any) -> None:
        due = state.hold_expires_at(config.admission_hold) if state is not None else None
        due_ms = _epoch_ms(due)
        if due_ms is not None:
            holds[user_id] = due_ms
        elif user_id in holds:
            del holds[user_id]
        held.track(user_id, due_ms, written_partition())

    admit = _step("admit_orders", ADMISSION, config, after_write=track_held_orders)
    customers = built.tables["orders_customers"] = new_table(built.app, table("orders", "orders_customers"))
    register_step(built, admit, (USER_EVENTS, ORDER_COMMANDS), CustomerStore(customers), codec)

    deadlines = new_table(built.app, table("orders", "orders_deadlines"))
    built.tables["orders_deadlines"] = deadlines
    due_sagas = DueIndex(deadlines)

    def track_deadline(order_id: str, state: Any) -> None:
        due_ms = _epoch_ms(orders.pending_deadline(state))
        if due_ms is not None:
            deadlines[order_id] = due_ms
        elif order_id in deadlines:
            del deadlines[order_id]
        due_sagas.track(order_id, due_ms, written_partition())

    saga = _step("run_order_sagas", ORDER_SAGA, config, after_write=track_deadline)
    _add(built, codec, saga, (ORDER_EVENTS, INVENTORY_EVENTS, PAYMENT_EVENTS, ORDER_DEADLINES), "orders_sagas")

    for timer_table, index in ((deadlines, due_sagas), (holds, held)):
        timer_table.on_recover(_rebuild_after_recovery(timer_table, index))

    outbox = built.outbox

    async def sweep_deadlines(now: datetime | None = None) -> None:
        """Report the passed saga deadlines and the customers whose held orders are due, the earliest first, at
        most SWEEP_MAX_REPORTS of each; the agents decide (and ignore a report that is no longer true)."""
        now = now or datetime.now(UTC)

        async def report_deadlines(due: Sequence[Due]) -> None:
            reports = [
                OrderDeadlineReached(order_id=d.key, deadline_at=_from_epoch_ms(d.due_ms), observed_at=now) for d in due
            ]
            await _send_reports(outbox, reports, [f"deadline/{d.key}/{d.due_ms}" for d in due])

        async def release_held(due: Sequence[Due]) -> None:
            reports = [ReleaseHeldOrders(user_id=d.key, requested_at=now) for d in due]
            await _send_reports(outbox, reports, [f"admission-hold/{d.key}/{d.due_ms}" for d in due])

        now_ms = int(now.timestamp() * 1000)
        await report_due(due_sagas, now_ms, SWEEP_MAX_REPORTS, report_deadlines)
        await report_due(held, now_ms, SWEEP_MAX_REPORTS, release_held)

    built.timers["sweep_deadlines"] = sweep_deadlines

    @built.app.timer(interval=settings.deadline_sweep_s, name="sweep_deadlines")  # type: ignore[untyped-decorator]
    async def sweep_deadlines_now() -> None:  # no parameters: Faust would pass its app to a timer that takes one
        await sweep_deadlines()


def _rebuild_after_recovery(timer_table: Any, index: DueIndex) -> Callable[[], Awaitable[None]]:
    async def rebuild() -> None:
        """Recovery completed after a rebalance: the table holds this worker's partitions as they now stand."""
        index.rebuild(active_partitions(timer_table))

    return rebuild


async def _send_reports(outbox: Outbox, reports: Sequence[Message], cause_ids: Sequence[str]) -> None:
    """Send a timer's reports together: one wait for the broker, not one per report."""
    prepared = [
        message
        for report, cause_id in zip(reports, cause_ids, strict=True)
        for message in outbox.prepare([(report.record_name, to_record(report))], cause=None, cause_id=cause_id)
    ]
    await outbox.send_prepared(prepared)


def _epoch_ms(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


def _from_epoch_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _wire_inventory(built: ServiceApp, settings: Settings, codec: AvroCodec, config: SagaConfig) -> None:
    reserve = _step("reserve_inventory", RESERVATIONS, config)
    _add(built, codec, reserve, (ORDER_EVENTS, INVENTORY_EVENTS), "inventory_reservations")
    levels = built.tables["inventory_stock"] = new_table(built.app, table("inventory", "inventory_stock"))
    holds = built.tables["inventory_holds"] = new_table(built.app, table("inventory", "inventory_holds"))
    register_step(built, _step("keep_stock", STOCK, config), (INVENTORY_COMMANDS,), StockStore(levels, holds), codec)


def _wire_payments(built: ServiceApp, settings: Settings, codec: AvroCodec, config: SagaConfig) -> None:
    behaviour = ProviderBehaviour(
        latency_s=settings.payment_latency_ms / 1000,
        failure_rate=settings.payment_failure_rate,
        refund_failure_rate=settings.refund_failure_rate,
        seed=settings.payment_seed,
        slow_s=settings.payment_slow_s,
    )
    provider = SimulatedPaymentProvider(aioredis.Redis.from_url(settings.provider_store), behaviour)
    breaker = CircuitBreaker(
        "payment-provider",
        failure_threshold=settings.breaker_failure_threshold,
        reset_timeout_s=settings.breaker_reset_s,
    )
    built.breakers[breaker.name] = breaker
    built.checks.append(provider_check(provider, PROVIDER_PROBE_TIMEOUT_S))
    policy = RetryPolicy(attempts=settings.provider_call_attempts, base_s=settings.provider_retry_base_s)

    def unavailable(exc: Exception) -> bool:
        return isinstance(exc, ProviderUnavailable)

    async def guarded(operation: Callable[[], Awaitable[T]]) -> T:
        """A provider call through the breaker, transient failures retried (with jitter) within the call."""
        return await breaker.call(lambda: retry(operation, policy, transient=unavailable), is_failure=unavailable)

    async def charge(effect: ChargePayment) -> ChargeOutcome:
        try:
            charged = await guarded(
                lambda: provider.charge(
                    idempotency_key=effect.idempotency_key,
                    amount_cents=effect.amount_cents,
                    currency=effect.currency,
                    token=effect.token,
                )
            )
        except (CircuitOpen, ProviderUnavailable) as exc:
            return ChargeOutcome(False, reason=str(exc), unavailable=True)
        return ChargeOutcome(charged.ok, charged.payment_id, charged.reason)

    async def refund(effect: RefundPayment) -> RefundOutcome:
        if effect.retry_at is not None:
            await asyncio.sleep(max(0.0, (effect.retry_at - datetime.now(UTC)).total_seconds()))
        try:
            refunded = await guarded(
                lambda: provider.refund(
                    idempotency_key=effect.order_id, payment_id=effect.payment_id, attempt=effect.attempt
                )
            )
        except (CircuitOpen, ProviderUnavailable) as exc:
            return RefundOutcome(False, str(exc), effect.attempt)
        return RefundOutcome(refunded.ok, refunded.reason, effect.attempt)

    async def run_payment_effects(decision: Decision[Any], ctx: StepContext, message: Message) -> Decision[Any]:
        """Carry out charges and refunds, folding each answer back through the pure step."""
        state, events, effects = decision.state, list(decision.events), list(decision.effects)
        while effects:
            effect = effects.pop(0)
            if isinstance(effect, ChargePayment):
                outcome = payments.on_charge_result(state, await charge(effect), replace(ctx, now=datetime.now(UTC)))
            elif isinstance(effect, RefundPayment):
                outcome = payments.on_refund_result(state, await refund(effect), replace(ctx, now=datetime.now(UTC)))
            else:
                raise TypeError(f"payments cannot run {type(effect).__name__}")
            state = outcome.state
            events.extend(outcome.events)
            effects.extend(outcome.effects)
        return Decision(state, tuple(events))

    parked = new_table(built.app, table("payments", "payments_parked"))
    built.tables["payments_parked"] = parked

    def track_parked(order_id: str, state: Any) -> None:
        if payments.is_parked(state):
            if order_id not in parked:
                parked[order_id] = int(datetime.now(UTC).timestamp() * 1000)
        elif order_id in parked:
            del parked[order_id]

    step = _step("settle_payments", PAYMENTS, config, run_effects=run_payment_effects, after_write=track_parked)
    _add(built, codec, step, (ORDER_EVENTS, INVENTORY_EVENTS, PAYMENT_COMMANDS), "payments_payments")

    outbox = built.outbox
    asked: dict[str, float] = {}

    @built.app.timer(interval=settings.payment_retry_interval_s)  # type: ignore[untyped-decorator]
    async def retry_parked_charges() -> None:
        """Once the breaker would let a call through, ask for the parked charges again (one while half-open)."""
        if not parked or not breaker.would_allow():
            return
        budget = 1 if breaker.state is BreakerState.HALF_OPEN else len(parked)
        clock = time.monotonic()
        for order_id in sorted(parked, key=lambda o: (parked[o], o))[:budget]:
            if clock - asked.get(order_id, -DEADLINE_RESEND_S) < DEADLINE_RESEND_S:
                continue
            asked[order_id] = clock
            command = RetryPayment(order_id=order_id, requested_at=datetime.now(UTC))
            await outbox.send_all(
                [(command.record_name, to_record(command))], cause=None, cause_id=f"retry-payment/{order_id}/{clock}"
            )
        for order_id in [o for o in asked if o not in parked]:
            del asked[order_id]


def _wire_notifications(built: ServiceApp, settings: Settings, codec: AvroCodec, config: SagaConfig) -> None:
    _add(built, codec, _step("notify_customers", NOTIFICATIONS, config), (ORDER_EVENTS,), "notifications_notices")
    if settings.smtp_host:
        _wire_mail(built, settings, codec, config)


def mail_config(settings: Settings) -> MailConfig:
    return MailConfig(sender=settings.smtp_from, max_age=timedelta(seconds=settings.smtp_max_age_s))


def _wire_mail(built: ServiceApp, settings: Settings, codec: AvroCodec, config: SagaConfig) -> None:
    """E-mail the notices: an agent of its own, so a slow or absent mail server never holds ``notify_customers``
    (nor the view service, another group); see :mod:`streams.mailer`."""
    delivery = MailDelivery.from_settings(settings)
    built.breakers[delivery.breaker.name] = delivery.breaker
    step = _step("deliver_notices", DELIVERIES, config, run_effects=delivery.run_effects, mail=mail_config(settings))
    _add(built, codec, step, (NOTIFICATION_EVENTS, USER_EVENTS), "notifications_mailboxes")


def _wire_users(built: ServiceApp, settings: Settings, codec: AvroCodec, config: SagaConfig) -> None:
    users = UsersConfig(snapshot_every=settings.user_snapshot_every)
    _add(built, codec, _step("handle_user_commands", USERS, config, users=users), (USER_COMMANDS,), "users_users")
    _add(built, codec, _step("own_emails", EMAILS, config, users=users), (USER_EMAILS,), "users_emails")
    reactions = _step("react_to_user_events", USER_REACTIONS, config, users=users)
    _add(built, codec, reactions, (USER_EVENTS,), "users_reactions")
