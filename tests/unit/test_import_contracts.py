"""The import contracts in pyproject.toml stay complete as modules are added (lint-imports checks the imports)."""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import pytest

import streams

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in config["contracts"]}


def test_the_domain_is_forbidden_every_other_module_of_streams() -> None:
    forbidden = set(_contracts()["domain-at-the-bottom-of-streams"]["forbidden_modules"])  # type: ignore[call-overload]
    edge = {f"streams.{m.name}" for m in pkgutil.iter_modules(streams.__path__) if m.name != "domain"}
    assert edge == forbidden, "list every streams module but the domain in the contract"


def test_every_package_is_in_the_layers_and_checked_for_cycles() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    packages = set(config["hatch"]["build"]["targets"]["wheel"]["packages"])
    layers = {name.strip() for layer in _contracts()["layers"]["layers"] for name in layer.split("|")}  # type: ignore[attr-defined]
    assert layers == packages
    assert set(_contracts()["no-cycles"]["ancestors"]) == packages  # type: ignore[call-overload]
