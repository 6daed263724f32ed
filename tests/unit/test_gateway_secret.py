"""The HS256 secret: none in the repository, one per installation in a file, and the same rules for the gateway
and ``pipeline token`` (gateway/auth.py ``hs256_secret``, common/settings.py, pipeline/cli/tokens.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner

from common.settings import JWT_SECRET_FILE, Settings, get_settings
from gateway.app import create_app
from gateway.auth import PUBLISHED_SECRETS, AuthConfigError, TokenPolicy, verify_token
from pipeline.cli import main
from tests.gateway_support import DictRedis, MemoryPublisher, random_secret

pytestmark = pytest.mark.unit

[PUBLISHED] = PUBLISHED_SECRETS


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No secret in the environment, and a working directory of the test's own (the default file is relative)."""
    for name in ("PIPELINE_JWT_SECRET", "PIPELINE_JWT_SECRET_FILE", "PIPELINE_JWT_ALGORITHM", "PIPELINE_JWT_AUDIENCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secret + "\n")


def test_there_is_no_default_secret(bare: Path) -> None:
    settings = Settings()
    assert settings.jwt_secret.get_secret_value() == ""
    with pytest.raises(AuthConfigError, match="no JWT secret") as caught:
        TokenPolicy.from_settings(settings)
    assert str(bare / JWT_SECRET_FILE) in str(caught.value) and "infra/setup.sh secret" in str(caught.value)
    with pytest.raises(AuthConfigError, match="no JWT secret"):
        create_app(settings, MemoryPublisher(), DictRedis(), checks=[])  # type: ignore[arg-type]


def test_the_secret_once_published_as_the_default_is_refused(bare: Path) -> None:
    assert len(PUBLISHED.encode()) >= 32, "refused for what it is, not for its length"
    with pytest.raises(AuthConfigError, match="once published in this repository"):
        TokenPolicy.from_settings(Settings(jwt_secret=PUBLISHED))  # type: ignore[arg-type]
    write_secret(bare / JWT_SECRET_FILE, PUBLISHED)
    with pytest.raises(AuthConfigError, match="once published in this repository"):
        TokenPolicy.from_settings(Settings())


def test_a_secret_under_32_bytes_is_refused(bare: Path) -> None:
    with pytest.raises(AuthConfigError, match="at least 32 bytes"):
        TokenPolicy.from_settings(Settings(jwt_secret="x" * 31))  # type: ignore[arg-type]
    assert TokenPolicy.from_settings(Settings(jwt_secret="é" * 16)).key == ("é" * 16).encode()  # 32 bytes


def test_the_installation_secret_file_is_read_when_no_secret_is_set(
    bare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = random_secret()
    write_secret(bare / JWT_SECRET_FILE, secret)
    assert Settings().jwt_secret.get_secret_value() == secret  # the trailing newline dropped
    monkeypatch.setenv("PIPELINE_JWT_SECRET", "")
    assert Settings().jwt_secret.get_secret_value() == secret, "an empty variable is unset"
    other = random_secret()
    monkeypatch.setenv("PIPELINE_JWT_SECRET", other)
    assert Settings().jwt_secret.get_secret_value() == other, "the variable wins over the file"
    monkeypatch.delenv("PIPELINE_JWT_SECRET")
    elsewhere = bare / "run" / "secrets" / "jwt_secret"
    write_secret(elsewhere, other)
    monkeypatch.setenv("PIPELINE_JWT_SECRET_FILE", str(elsewhere))
    assert Settings().jwt_secret.get_secret_value() == other


def test_a_secret_path_that_cannot_be_read_is_named(bare: Path) -> None:
    (bare / JWT_SECRET_FILE).mkdir(parents=True)  # what a bind mount of a missing file can leave behind
    with pytest.raises(AuthConfigError, match=f"{JWT_SECRET_FILE} cannot be read"):
        TokenPolicy.from_settings(Settings())


# --- `pipeline token` and `pipeline gateway` ------------------------------------------------------------------


def test_pipeline_token_signs_with_the_installation_secret_what_the_gateway_accepts(
    bare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_secret(bare / JWT_SECRET_FILE, random_secret())
    monkeypatch.setenv("PIPELINE_JWT_AUDIENCE", "shop")
    result = CliRunner().invoke(main, ["token", "--subject", "u-42"])
    assert result.exit_code == 0, result.output
    policy = TokenPolicy.from_settings(Settings())
    assert policy.audience == "shop"
    principal = verify_token(result.output.strip(), policy)
    assert principal.subject == "u-42" and principal.claims["aud"] == "shop"
    with pytest.raises(jwt.InvalidSignatureError):  # not signed with anything in the repository
        jwt.decode(result.output.strip(), PUBLISHED, algorithms=["HS256"], audience="shop")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "error: no JWT secret"),
        ({"PIPELINE_JWT_SECRET": PUBLISHED}, "once published in this repository"),
        ({"PIPELINE_JWT_SECRET": "short"}, "at least 32 bytes"),
    ],
)
def test_pipeline_token_and_the_gateway_refuse_an_unusable_secret(
    bare: Path, env: dict[str, str], message: str
) -> None:
    for args in (["token", "--subject", "u-42"], ["gateway", "--host", "127.0.0.1", "--port", "0"]):
        result = CliRunner().invoke(main, args, env=env)
        get_settings.cache_clear()
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert result.output.count("\n") == 1, result.output


def test_pipeline_token_refuses_a_subject_that_is_not_clean_text(bare: Path) -> None:
    write_secret(bare / JWT_SECRET_FILE, random_secret())
    result = CliRunner().invoke(main, ["token", "--subject", "u-\x85"])
    assert result.exit_code == 1 and "control character (U+0085)" in result.output
