"""The order saga's domain: pure functions, no I/O, standard library only.

Six services react to each other's events (no orchestrator), each with its own state keyed by the Kafka key
of what it consumes: admission (user id), the order saga (order id), inventory per order and per SKU,
payments and notifications (order id). Every step is ``decide(state, message, ctx) -> Decision`` in its
module; :mod:`streams.domain.saga` lists them with the records they handle. The user service's steps
(:mod:`~streams.domain.users`, event-sourced, :mod:`~streams.domain.emails`, :mod:`~streams.domain.user_reactions`)
follow the same rules and are listed apart, in ``saga.USER_SERVICES``.

Rules every step keeps:

* **Pure and deterministic.** The only clock is ``ctx.now``; the same state, message and context always give
  the same decision. Business outcomes are events (a bad command becomes a rejection); a step raises only
  for a programming error.
* **Redelivery.** Delivery is at-least-once. A duplicate input never changes the state again, and it
  re-emits the events (and effects) its first application emitted, in the same order, taken from the state
  rather than recomputed: same content, same timestamps. So an edge that crashed after writing the state
  but before its sends went out recovers by replaying the input. With the edge's event ids derived from
  (causing event id, index, record, key), the replay produces the very same messages, and downstream steps,
  idempotent themselves, drop them. The other crash window (sent, state not written) makes the step decide
  again from the old state: that is only the same decision if the same inputs replay in the same order with
  the same ``ctx.now``, which Faust does not promise across topics; write the state first.
* **Ordering.** Only per-key order within one topic is assumed. Events of one order arriving over different
  topics (inventory, payments, orders, deadlines) may come in any order; each step handles every order of
  arrival (e.g. PaymentSucceeded before InventoryReserved, a cancellation while reservations are in flight).
* **Immutable state.** States are frozen dataclasses replaced, never mutated; ``to_json`` / ``from_json``
  store them in a Faust table.
"""

from streams.domain.core import (
    ChargeOutcome,
    ChargePayment,
    Decision,
    Effect,
    RefundOutcome,
    RefundPayment,
    SagaConfig,
    StepContext,
)
from streams.domain.messages import MESSAGE_TYPES, Message, from_record, to_record

__all__ = [
    "MESSAGE_TYPES",
    "ChargeOutcome",
    "ChargePayment",
    "Decision",
    "Effect",
    "Message",
    "RefundOutcome",
    "RefundPayment",
    "SagaConfig",
    "StepContext",
    "from_record",
    "to_record",
]
