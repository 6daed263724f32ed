"""E-mail ownership, keyed by the normalised (trimmed, lower-cased) address: no two users own one address.

Users are partitioned by user id, so no user step can see another user's address. Like the per-SKU stock
step, this step is the single writer of one address: the user step sends ClaimEmail (on registration or an
e-mail change) and gets EmailClaimed or EmailClaimRefused back on ``users.commands.v1`` (the user's inbox),
keyed by user id.
A user that claims an address it already owns gets EmailClaimed again. After an e-mail change the user step
sends ReleaseEmail for the old address, naming the claim under which it held it: a release of an older claim
(a redelivery that comes after the user claimed the address anew) is ignored, so it can never free an
address its owner still holds.

Redelivery: a claim whose ``request_id`` this address answered recently (the last
:attr:`UsersConfig.remembered_claims`) gets the very same answer again and changes nothing; a release that
does not match the current owner and claim changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from streams.domain.core import Decision, StepContext
from streams.domain.messages import ClaimEmail, EmailClaimed, EmailClaimRefused, JsonState, Message, ReleaseEmail

HANDLES = frozenset({"ClaimEmail", "ReleaseEmail"})

EMAIL_IN_USE = "e-mail already in use"


@dataclass(frozen=True, kw_only=True)
class EmailOwner(JsonState):
    """One address: who owns it, under which claim, and the answers it gave lately."""

    email: str
    owner: str | None = None
    """The owning user's id; None while the address is free."""
    claim_id: str | None = None
    """The ``request_id`` of the claim under which ``owner`` holds the address."""
    answers: tuple[EmailClaimed | EmailClaimRefused, ...] = ()
    """The last answers given, oldest first; a repeated claim gets its answer from here."""


def decide(state: EmailOwner | None, message: Message, ctx: StepContext) -> Decision[EmailOwner]:
    """Apply one claim or release to the address."""
    match message:
        case ClaimEmail():
            return claim_email(state, message, ctx)
        case ReleaseEmail():
            return release_email(state, message, ctx)
    return Decision(state)


def claim_email(state: EmailOwner | None, command: ClaimEmail, ctx: StepContext) -> Decision[EmailOwner]:
    """Grant a free address (or one the user already owns); refuse one another user owns."""
    state = state or EmailOwner(email=command.email)
    for earlier in state.answers:
        if earlier.request_id == command.request_id and earlier.user_id == command.user_id:
            return Decision(state, (earlier,))
    answer: EmailClaimed | EmailClaimRefused
    if state.owner is None or state.owner == command.user_id:
        answer = EmailClaimed(
            user_id=command.user_id, email=state.email, request_id=command.request_id, claimed_at=ctx.now
        )
        state = replace(state, owner=command.user_id, claim_id=command.request_id)
    else:
        answer = EmailClaimRefused(
            user_id=command.user_id,
            email=state.email,
            request_id=command.request_id,
            reason=EMAIL_IN_USE,
            refused_at=ctx.now,
        )
    remembered = (*state.answers, answer)[-ctx.users.remembered_claims :]
    return Decision(replace(state, answers=remembered), (answer,))


def release_email(state: EmailOwner | None, command: ReleaseEmail, ctx: StepContext) -> Decision[EmailOwner]:
    """Free the address if the user still owns it under the claim it names; anything else is stale."""
    if state is None or state.owner != command.user_id or state.claim_id != command.request_id:
        return Decision(state)
    return Decision(replace(state, owner=None, claim_id=None))
