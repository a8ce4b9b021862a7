"""requirements-lock.txt (what `make setup` installs, with uv) pins a version of every
dependency pyproject.toml names, inside its range, and the environment the tests run in is
the locked one: an edit of pyproject.toml without `make lock` fails here."""

from __future__ import annotations

import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO


def _pins() -> dict[str, Version]:
    lines = (REPO / "requirements-lock.txt").read_text().splitlines()
    pairs = (line.split("==") for line in lines if line and not line.startswith("#"))
    return {canonicalize_name(name): Version(version) for name, version in pairs}


def test_the_lock_pins_every_dependency_within_its_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins()
    for spec in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue  # TORCH_SPEC decides it (a CPU or a CUDA build)
        assert name in pins, f"{spec}: not in requirements-lock.txt (run `make lock`)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{spec}: locked at {pins[name]} (run `make lock`)"
        )


def _installed(name: str) -> Version | None:
    """The version import resolves first: other copies further down sys.path (setuptools'
    vendored packaging, zipp, ... once it is imported) don't count."""
    try:
        return Version(metadata.version(name))
    except metadata.PackageNotFoundError:
        return None


def test_the_environment_is_the_locked_one() -> None:
    differing = {
        name: (str(pinned), str(_installed(name)))
        for name, pinned in _pins().items()
        if _installed(name) != pinned
    }
    assert not differing, f"(locked, installed): {differing}; run `make setup`"
