"""Bearer tokens, checked without I/O: the gateway's authentication is a pure function of a header and config.

* The algorithm is **pinned by configuration** (``PIPELINE_JWT_ALGORITHM``: ``HS256`` with
  ``PIPELINE_JWT_SECRET``, or ``RS256`` with the PEM ``PIPELINE_JWT_PUBLIC_KEY``); the token's own ``alg``
  header is never trusted, so ``alg: none`` and an HS256 token signed with the RS256 public key as its secret
  (the classic key-confusion attack) are both refused.
* There is no default HS256 secret: it comes from ``PIPELINE_JWT_SECRET`` or the per-installation file
  ``infra/setup.sh`` writes (``PIPELINE_JWT_SECRET_FILE``). Under 32 bytes, or the development default this
  repository once published, it is refused (:func:`hs256_secret`) and the gateway does not start.
* ``exp``, ``iss`` and ``sub`` are required; ``exp`` and ``iss`` are checked (a small leeway absorbs clock
  skew), ``aud`` only when an audience is configured (then it is required too). A ``sub`` that is not clean
  text (:mod:`streams.domain.text`) is refused, since it becomes the key and the customer of the commands.
* Every failure reads the same to the client (``Invalid token``); the reason is kept for the log.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from common.settings import Settings
from streams.domain.text import text_problem

LEEWAY_S = 5
"""Clock skew tolerated on ``exp`` / ``nbf`` / ``iat``."""

MIN_HS256_SECRET_BYTES = 32
"""RFC 7518 §3.2: an HMAC key at least as long as the hash."""

PUBLISHED_SECRETS = frozenset({"order-pipeline-dev-only-jwt-secret-do-not-use-in-production"})
"""HS256 secrets once published in this repository as defaults: anyone can sign tokens with them."""

NO_TOKEN = "No token provided"
INVALID_TOKEN = "Invalid token"


class AuthError(Exception):
    """A request without a usable token. ``public`` is what the client is told, ``reason`` what the log says."""

    def __init__(self, public: str, reason: str) -> None:
        super().__init__(reason)
        self.public = public
        self.reason = reason


class AuthConfigError(ValueError):
    """The gateway's token settings cannot work (no key, a key of the wrong kind, a short secret)."""


@dataclass(frozen=True)
class TokenPolicy:
    """What a valid token looks like: one algorithm, its verification key, the issuer and maybe an audience."""

    algorithm: str
    key: Any
    """The HS256 secret (bytes) or the RS256 public key object."""
    issuer: str
    audience: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenPolicy:
        """The policy the settings describe; raises :class:`AuthConfigError` for an unusable combination."""
        if settings.jwt_algorithm == "HS256":
            key: Any = hs256_secret(settings)
        else:
            if not settings.jwt_public_key:
                raise AuthConfigError("PIPELINE_JWT_ALGORITHM=RS256 needs PIPELINE_JWT_PUBLIC_KEY (a PEM public key)")
            key = load_rsa_public_key(settings.jwt_public_key)
        return cls(settings.jwt_algorithm, key, settings.jwt_issuer, settings.jwt_audience or None)


def hs256_secret(settings: Settings) -> bytes:
    """The HS256 secret the settings name, or :class:`AuthConfigError` saying why it cannot be used.

    Used by the gateway to verify and by ``pipeline token`` to sign, so both refuse the same secrets.
    """
    secret = settings.jwt_secret.get_secret_value()
    if not secret:
        path = Path(settings.jwt_secret_file)
        where = f"{path} cannot be read" if path.exists() else f"there is no {path.resolve()}"
        raise AuthConfigError(
            f"no JWT secret: PIPELINE_JWT_SECRET is unset and {where}; run `infra/setup.sh secret` to write a "
            "random one for this installation, or set PIPELINE_JWT_SECRET (32+ random bytes)"
        )
    if secret in PUBLISHED_SECRETS:
        raise AuthConfigError(
            "PIPELINE_JWT_SECRET is the development default once published in this repository, so anyone can sign "
            "tokens with it: use a random secret of your own (`infra/setup.sh secret` writes one)"
        )
    encoded = secret.encode()
    if len(encoded) < MIN_HS256_SECRET_BYTES:
        raise AuthConfigError(f"PIPELINE_JWT_SECRET must be at least {MIN_HS256_SECRET_BYTES} bytes for HS256")
    return encoded


def load_rsa_public_key(pem: str) -> Any:
    """An RSA public key from PEM text (literal ``\\n`` sequences, as env files often carry them, are accepted)."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.replace("\\n", "\n").encode())
    except ValueError as exc:
        raise AuthConfigError(f"PIPELINE_JWT_PUBLIC_KEY is not a PEM public key: {exc}") from exc
    if not isinstance(key, RSAPublicKey):
        raise AuthConfigError("PIPELINE_JWT_PUBLIC_KEY must be an RSA public key for RS256")
    return key


@dataclass(frozen=True)
class Principal:
    """Who a valid token speaks for."""

    subject: str
    claims: dict[str, Any]


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; :class:`AuthError` when there is none."""
    if authorization is None or not authorization.strip():
        raise AuthError(NO_TOKEN, "no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(NO_TOKEN, f"Authorization scheme {scheme!r} is not Bearer")
    token = token.strip()
    if not token:
        raise AuthError(NO_TOKEN, "empty bearer token")
    return token


def verify_token(token: str, policy: TokenPolicy) -> Principal:
    """The principal of a valid token; :class:`AuthError` (``Invalid token``) for anything else."""
    options: dict[str, Any] = {"require": ["exp", "iss", "sub"], "verify_aud": policy.audience is not None}
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            policy.key,
            algorithms=[policy.algorithm],
            issuer=policy.issuer,
            audience=policy.audience,
            leeway=LEEWAY_S,
            options=options,  # type: ignore[arg-type]
        )
    except jwt.PyJWTError as exc:
        raise AuthError(INVALID_TOKEN, f"{type(exc).__name__}: {exc}") from exc
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise AuthError(INVALID_TOKEN, "sub claim is empty or not a string")
    if (problem := text_problem(subject)) is not None:
        raise AuthError(INVALID_TOKEN, f"sub claim {problem}")
    return Principal(subject, claims)


def authenticate(authorization: str | None, policy: TokenPolicy) -> Principal:
    """Header to principal, or :class:`AuthError`."""
    return verify_token(bearer_token(authorization), policy)


def issue_token(
    subject: str,
    secret: str,
    *,
    issuer: str,
    audience: str | None = None,
    ttl_s: int = 3600,
    now: float | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """A development HS256 token for ``subject`` (``pipeline token``); production tokens come from an IdP."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": subject,
        "iss": issuer,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
        "jti": uuid.uuid4().hex,
        **(extra or {}),
    }
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
