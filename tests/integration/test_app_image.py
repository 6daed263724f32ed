"""The app image, built the way `make run` and `docker compose build` build it: from infra/app/Dockerfile.

infra/setup.sh picks the base (python:3.11-slim where it can be pulled, else the Debian root filesystem it builds
and a wheelhouse); Docker's layer cache makes the build take seconds after the first. The image then does real
work against the test broker: its CLI reports the project's version and creates every declared topic.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from importlib.metadata import version

import pytest

from common.admin import all_topics
from tests.stack import ROOT, KafkaNode

IMAGE = "order-pipeline/app:dockerfile-test"
pytestmark = pytest.mark.timeout(1500)  # a first build on a fresh machine: the base, the wheelhouse, the layers


@pytest.fixture(scope="module")
def app_image() -> Iterator[str]:
    """The app image built from the Dockerfile under a tag of its own, removed afterwards (its layers stay cached)."""
    built = subprocess.run(
        [str(ROOT / "infra" / "setup.sh"), "app-image"],
        env={**os.environ, "PIPELINE_APP_IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    try:
        yield IMAGE
    finally:
        subprocess.run(["docker", "rmi", IMAGE], capture_output=True, check=False)


def in_image(image: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``args`` in a throwaway container on the host's network (the test broker listens on 127.0.0.1)."""
    flags = [f"--env={key}={value}" for key, value in (env or {}).items()]
    return subprocess.run(
        ["docker", "run", "--rm", "--network=host", *flags, image, *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_image_is_built_from_the_dockerfile(app_image: str) -> None:
    history = subprocess.run(
        ["docker", "image", "history", "--no-trunc", "--format", "{{.CreatedBy}}", app_image],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "pip install -q --no-deps --no-build-isolation /src" in history, history


def test_the_images_cli_knows_its_version_and_creates_every_topic(app_image: str, kafka: KafkaNode) -> None:
    shown = in_image(app_image, "pipeline", "--version")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"pipeline {version('order-pipeline')}"

    applied = in_image(
        app_image, "pipeline", "topics", "apply", "--json", env={"PIPELINE_KAFKA_BOOTSTRAP": kafka.bootstrap}
    )
    assert applied.returncode == 0, applied.stderr
    changes = [json.loads(line) for line in applied.stdout.splitlines()]
    assert {change["topic"] for change in changes} == {spec.name for spec in all_topics()}
    assert {change["action"] for change in changes} <= {"created", "unchanged", "partitions", "config"}
