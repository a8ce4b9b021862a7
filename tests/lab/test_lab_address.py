"""flows/lab_servers.py without servers: addresses, URLs and the password file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from flows.lab_servers import LabAddress, password_file


@pytest.mark.parametrize(
    ("bind", "own", "loopback"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("0.0.0.0", "127.0.0.1", False),
        ("10.0.0.5", "10.0.0.5", False),
    ],
)
def test_the_head_reaches_its_own_servers_where_they_listen(bind, own, loopback) -> None:
    address = LabAddress(bind=bind, host="head.lab")
    assert address.own == own and address.on_loopback is loopback


def test_urls_name_the_advertised_host_and_never_a_password() -> None:
    address = LabAddress("0.0.0.0", "head.lab", 15432, 15000, 14200)
    assert address.database("optuna") == "postgresql+psycopg://ttm@head.lab:15432/optuna"
    assert address.database("prefect", "asyncpg").startswith("postgresql+asyncpg://ttm@head")
    assert address.mlflow == "http://head.lab:15000"
    assert address.prefect_api == "http://head.lab:14200/api"


def test_the_password_file_is_private_random_and_kept(tmp_path: Path) -> None:
    first = password_file(tmp_path / "state")
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    line = first.read_text().strip()
    assert line.startswith("*:*:*:ttm:") and len(line.rsplit(":", 1)[1]) >= 24
    assert password_file(tmp_path / "state").read_text().strip() == line  # not regenerated
    assert password_file(tmp_path / "other").read_text().strip() != line
