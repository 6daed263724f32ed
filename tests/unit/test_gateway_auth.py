"""Bearer tokens: pinned algorithm, required claims, and the classic attacks refused (gateway/auth.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from common.settings import Settings
from gateway.auth import (
    INVALID_TOKEN,
    NO_TOKEN,
    AuthConfigError,
    AuthError,
    TokenPolicy,
    authenticate,
    bearer_token,
    issue_token,
    verify_token,
)
from gateway.tracing import TraceContext, parse_traceparent
from tests.gateway_support import random_secret

pytestmark = pytest.mark.unit

SECRET = random_secret()  # 64 characters: long enough for HS512 too


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def hs_settings(**overrides: object) -> Settings:
    return Settings(jwt_secret=SECRET, **overrides)  # type: ignore[arg-type]


def rs_settings(key: rsa.RSAPrivateKey, **overrides: object) -> Settings:
    return Settings(jwt_algorithm="RS256", jwt_public_key=public_pem(key), **overrides)  # type: ignore[arg-type]


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"sub": "u-1", "iss": "order-pipeline", "iat": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, object], payload: dict[str, object], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


def reason_of(token: str, policy: TokenPolicy) -> AuthError:
    with pytest.raises(AuthError) as caught:
        verify_token(token, policy)
    assert caught.value.public == INVALID_TOKEN
    return caught.value


# --- the header ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header", [None, "", "   ", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "token-without-scheme"]
)
def test_a_missing_or_non_bearer_header_is_no_token(header: str | None) -> None:
    with pytest.raises(AuthError) as caught:
        bearer_token(header)
    assert caught.value.public == NO_TOKEN


def test_the_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("  Bearer   abc.def.ghi  ") == "abc.def.ghi"


# --- HS256 (the default) -------------------------------------------------------------------------------------


def test_a_valid_hs256_token_names_its_subject() -> None:
    policy = TokenPolicy.from_settings(hs_settings())
    token = issue_token("u-42", SECRET, issuer="order-pipeline", ttl_s=60)
    principal = authenticate(f"Bearer {token}", policy)
    assert principal.subject == "u-42"
    assert principal.claims["iss"] == "order-pipeline"


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30", "x" * 5000])
def test_garbage_is_an_invalid_token(garbage: str) -> None:
    reason_of(garbage, TokenPolicy.from_settings(hs_settings()))


def test_an_expired_token_is_invalid() -> None:
    policy = TokenPolicy.from_settings(hs_settings())
    token = issue_token("u-1", SECRET, issuer="order-pipeline", ttl_s=60, now=time.time() - 3600)
    assert "ExpiredSignature" in reason_of(token, policy).reason


def test_a_token_from_another_issuer_is_invalid() -> None:
    policy = TokenPolicy.from_settings(hs_settings())
    token = issue_token("u-1", SECRET, issuer="someone-else")
    assert "Issuer" in reason_of(token, policy).reason


def test_a_token_signed_with_another_secret_is_invalid() -> None:
    policy = TokenPolicy.from_settings(hs_settings())
    token = issue_token("u-1", "another-secret-that-is-long-enough-for-hs256!", issuer="order-pipeline")
    assert "Signature" in reason_of(token, policy).reason


@pytest.mark.parametrize("missing", ["exp", "iss", "sub"])
def test_required_claims_must_be_present(missing: str) -> None:
    policy = TokenPolicy.from_settings(hs_settings())
    token = jwt.encode(claims(**{missing: None}), SECRET, algorithm="HS256")
    reason_of(token, policy)


@pytest.mark.parametrize("subject", ["", "   ", 42])
def test_the_subject_must_be_a_non_empty_string(subject: object) -> None:
    policy = TokenPolicy.from_settings(hs_settings())
    token = unsigned({"alg": "HS256", "typ": "JWT"}, claims(sub=subject))
    signing_input = token.rsplit(".", 1)[0].encode()
    signature = hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()
    reason_of(f"{signing_input.decode()}.{b64(signature)}", policy)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(alg: str) -> None:
    policy = TokenPolicy.from_settings(hs_settings())
    reason_of(unsigned({"alg": alg, "typ": "JWT"}, claims()), policy)
    reason_of(unsigned({"alg": alg, "typ": "JWT"}, claims()).rstrip("."), policy)


def test_another_hmac_algorithm_is_refused_even_with_the_right_secret() -> None:
    policy = TokenPolicy.from_settings(hs_settings())
    token = jwt.encode(claims(), SECRET, algorithm="HS512")
    assert "algorithm" in reason_of(token, policy).reason.lower()


def test_audience_is_checked_only_when_configured() -> None:
    with_audience = TokenPolicy.from_settings(hs_settings(jwt_audience="shop"))
    reason_of(jwt.encode(claims(), SECRET, algorithm="HS256"), with_audience)
    reason_of(jwt.encode(claims(aud="elsewhere"), SECRET, algorithm="HS256"), with_audience)
    assert verify_token(jwt.encode(claims(aud="shop"), SECRET, algorithm="HS256"), with_audience).subject == "u-1"
    without = TokenPolicy.from_settings(hs_settings())
    assert verify_token(jwt.encode(claims(aud="anything"), SECRET, algorithm="HS256"), without).subject == "u-1"


def test_a_short_hs256_secret_is_a_configuration_error() -> None:
    with pytest.raises(AuthConfigError, match="at least 32 bytes"):
        TokenPolicy.from_settings(Settings(jwt_secret="short"))  # type: ignore[arg-type]


@pytest.mark.parametrize("subject", ["u-\x00", "u\n1", "u-\x9b", "u-\ud800"])
def test_a_subject_that_is_not_clean_text_is_invalid(subject: str) -> None:
    """The subject becomes the customer and the Kafka key of the commands: no control characters in it."""
    policy = TokenPolicy.from_settings(hs_settings())
    payload = json.dumps(claims(sub=subject)).encode()  # \u escapes, as any JWT library writes them
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(payload)}".encode()
    token = f"{signing_input.decode()}.{b64(hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest())}"
    assert "sub claim contains" in reason_of(token, policy).reason


# --- RS256 ---------------------------------------------------------------------------------------------------


def test_rs256_happy_path(rsa_key: rsa.RSAPrivateKey) -> None:
    policy = TokenPolicy.from_settings(rs_settings(rsa_key))
    token = jwt.encode(claims(sub="u-rs"), rsa_key, algorithm="RS256")
    assert verify_token(token, policy).subject == "u-rs"


def test_rs256_public_key_with_escaped_newlines_is_accepted(rsa_key: rsa.RSAPrivateKey) -> None:
    settings = Settings(jwt_algorithm="RS256", jwt_public_key=public_pem(rsa_key).replace("\n", "\\n"))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert verify_token(token, TokenPolicy.from_settings(settings)).subject == "u-1"


def test_an_hs256_token_is_refused_when_rs256_is_configured(rsa_key: rsa.RSAPrivateKey) -> None:
    policy = TokenPolicy.from_settings(rs_settings(rsa_key))
    reason_of(jwt.encode(claims(), SECRET, algorithm="HS256"), policy)


def test_key_confusion_hs256_signed_with_the_public_key_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    """The classic attack: the RS256 public key (which is public) used as an HMAC secret."""
    policy = TokenPolicy.from_settings(rs_settings(rsa_key))
    token = unsigned({"alg": "HS256", "typ": "JWT"}, claims())
    signing_input = token.rsplit(".", 1)[0].encode()
    signature = hmac.new(public_pem(rsa_key).encode(), signing_input, hashlib.sha256).digest()
    reason_of(f"{signing_input.decode()}.{b64(signature)}", policy)


def test_an_rs256_token_from_another_key_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    policy = TokenPolicy.from_settings(rs_settings(rsa_key))
    reason_of(jwt.encode(claims(), other, algorithm="RS256"), policy)


def test_an_expired_rs256_token_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    policy = TokenPolicy.from_settings(rs_settings(rsa_key))
    reason_of(jwt.encode(claims(exp=int(time.time()) - 3600), rsa_key, algorithm="RS256"), policy)


def test_rs256_needs_an_rsa_public_key() -> None:
    with pytest.raises(AuthConfigError, match="needs PIPELINE_JWT_PUBLIC_KEY"):
        TokenPolicy.from_settings(Settings(jwt_algorithm="RS256"))
    with pytest.raises(AuthConfigError, match="not a PEM public key"):
        TokenPolicy.from_settings(Settings(jwt_algorithm="RS256", jwt_public_key="not a key"))
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(AuthConfigError, match="RSA public key"):
        TokenPolicy.from_settings(Settings(jwt_algorithm="RS256", jwt_public_key=ec_pem))


# --- trace context -------------------------------------------------------------------------------------------


def test_a_valid_traceparent_is_continued_with_a_new_span() -> None:
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    trace = TraceContext.from_header(header)
    assert trace.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace.parent_span_id == "00f067aa0ba902b7"
    assert trace.span_id != "00f067aa0ba902b7" and len(trace.span_id) == 16
    assert trace.traceparent == f"00-{trace.trace_id}-{trace.span_id}-01"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has no extra fields
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    ],
)
def test_an_absent_or_invalid_traceparent_starts_a_new_trace(header: str | None) -> None:
    assert parse_traceparent(header) is None
    trace = TraceContext.from_header(header)
    assert parse_traceparent(trace.traceparent) is not None
    assert trace.parent_span_id is None
    assert TraceContext.from_header(header).trace_id != trace.trace_id
