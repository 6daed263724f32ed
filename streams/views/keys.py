"""The Redis key space of the read views: every key and prefix, named once.

``view:*`` is the view service's alone (:mod:`streams.view_service` mirrors its tables there; ``pipeline views
rebuild`` drops all of it); the ``views-meta:*`` marks sit outside it. Times are event times in epoch milliseconds,
JSON is canonical (sorted keys, no spaces), nothing records processing time:

==============================================  ======  =========================================================
key                                             type    content
==============================================  ======  =========================================================
``view:order:{order_id}``                       string  JSON order view: ``order_id``, ``status`` (PLACED,
                                                        STOCK_RESERVED, PAYMENT_PENDING, CONFIRMED, CANCELLED,
                                                        REJECTED,
                                                        COMPENSATION_FAILED; null until a status-bearing event),
                                                        ``user_id``, ``lines``, ``total_cents``, ``currency``,
                                                        ``placed_at``, ``deadline_at``, ``channel``, ``note``,
                                                        ``payment_method``, ``cancel_reason``, ``payment_id``,
                                                        ``charged_cents``, ``refunded_cents``, ``terminal_at``,
                                                        ``updated_at``, ``compensation`` (the last
                                                        OrderCompensationFailed's fields + ``resolved_at``/``_by``),
                                                        ``needs_attention``, and ``timeline``: one entry per
                                                        distinct event ``{at, event, service, id, detail}``
                                                        sorted by event time
``view:user-orders:{user_id}``                  zset    order ids scored by ``placed_at`` (newest = highest)
``view:user-order-summaries:{user_id}``         hash    order id → JSON ``{order_id, status, total_cents,
                                                        currency, placed_at, updated_at, cancel_reason}``
``view:stock:{sku}``                            hash    ``sku``, ``available``, ``reserved``, ``sold``,
                                                        ``stock_version``, ``updated_at``, ``last_event``,
                                                        ``event_id`` (only newer ``stock_version`` applied)
``view:skus``                                   set     every SKU with a stock view
``view:attention``                              hash    order id → JSON: the OrderCompensationFailed fields
                                                        (``failed_step``, ``reason``, ``attempts``,
                                                        ``payment_id``, ``amount_cents``, ``failed_at``, …) and
                                                        ``order`` (the order view); removed once a
                                                        PaymentRefunded at or after the failure arrives
``view:notifications:{user_id}``                list    JSON NotificationSent values, newest first (100 kept)
``view:user:{user_id}``                         string  JSON user view: ``user_id``, ``username``, ``email``,
                                                        ``profile`` (merged), ``active``,
                                                        ``deactivation_reason``, ``version`` (only newer applied),
                                                        ``registered_at``, ``updated_at``, ``login_count``,
                                                        ``last_login_at``, ``onboarding_started_at``
``view:user-email:{email}``                     set     user ids whose current address is ``email`` (lower-cased)
``view:users:by-username``                      zset    ``{lower-cased username}\\x00{user_id}``, score 0 (prefix)
``view:users:by-registered``                    zset    user ids scored by ``registered_at``
``view:users:by-profile``                       zset    ``{attribute}\\x00{lower-cased value}\\x00{user_id}``, score 0
                                                        (one member per profile attribute of each user)
``view:user-rejections:{user_id}``              list    JSON UserCommandRejected values + ``event_id``, newest
                                                        first (20 kept)
``view:command:{command_id}``                   string  JSON outcome of a user command (the id is its ``ce_id``):
                                                        ``command_id``, ``status`` (applied, refused), ``event``,
                                                        ``event_id``, ``decided_at``, ``user_id``, ``version``,
                                                        and when refused ``command``, ``reason``,
                                                        ``expected_version``, ``actual_version``; expires a day
                                                        after ``decided_at`` (the user's table entry keeps it)
==============================================  ======  =========================================================
"""

from __future__ import annotations

VIEW_PREFIX = "view:"
MIRRORED_KEY = "views-meta:mirrored"
"""Hash (outside ``view:*``): one field per view table partition (:func:`mirrored_field`) whose entries Redis
holds. The view service writes a field once it mirrored that partition whole; Redis flushed or replaced loses
them all, which is how the view service notices what to re-mirror from its tables. The views are whole when
every field is there (:data:`MIRRORED_FIELDS`)."""


def mirrored_field(table: str, partition: int) -> str:
    return f"{table}/{partition}"


ATTENTION_KEY = "view:attention"
SKUS_KEY = "view:skus"
USERNAMES_KEY = "view:users:by-username"
"""Sorted set, all scores 0, members ``{lower-cased username}\x00{user_id}``: prefix search with ZRANGEBYLEX."""
REGISTERED_KEY = "view:users:by-registered"
"""Sorted set of user ids scored by ``registered_at`` (epoch ms): search by registration time."""
PROFILES_KEY = "view:users:by-profile"
"""Sorted set, all scores 0, members ``{attribute}\x00{lower-cased value}\x00{user_id}``: search by a profile
attribute's value with ZRANGEBYLEX (neither part can hold ``\x00``: profile text is clean)."""


def order_key(order_id: str) -> str:
    return f"view:order:{order_id}"


def user_orders_key(user_id: str) -> str:
    return f"view:user-orders:{user_id}"


def user_order_summaries_key(user_id: str) -> str:
    return f"view:user-order-summaries:{user_id}"


def stock_key(sku: str) -> str:
    return f"view:stock:{sku}"


def notifications_key(user_id: str) -> str:
    return f"view:notifications:{user_id}"


def user_key(user_id: str) -> str:
    return f"view:user:{user_id}"


def user_email_key(email: str) -> str:
    return f"view:user-email:{email.strip().lower()}"


def user_rejections_key(user_id: str) -> str:
    return f"view:user-rejections:{user_id}"


def command_key(command_id: str) -> str:
    return f"view:command:{command_id}"
