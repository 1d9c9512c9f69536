"""The shared conftest: server markers skip (or fail) cleanly, and fixtures add their marker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")
INI = """\
[pytest]
addopts = -p no:cacheprovider -rs --strict-markers
markers =
    redis: r
    postgres: p
    amqp: a
    nats: n
    slow: s
"""
TESTS = """\
import pytest

@pytest.mark.redis
def test_marked_only():
    pass

def test_by_fixture(redis_url):
    pass

@pytest.mark.amqp
def test_amqp():
    pass

def test_plain():
    pass
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(tmp_path: Path, *args: str, require: bool = False) -> subprocess.CompletedProcess[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_sample.py").write_text(TESTS)
    dead = _free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ONEX_"))}
    env["ONEX_REDIS_URL"] = f"redis://127.0.0.1:{dead}/0"
    env["ONEX_AMQP_URL"] = f"amqp://guest:hunter2@127.0.0.1:{dead}/"
    if require:
        env["ONEX_REQUIRE_SERVICES"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow  # each runs pytest in a subprocess
def test_a_marked_test_skips_when_its_server_is_unreachable(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 3 skipped" in proc.stdout  # the marker alone is enough, no fixture needed
    assert "Redis is unreachable at redis://127.0.0.1:" in proc.stdout
    assert "point ONEX_REDIS_URL at one" in proc.stdout
    assert "RabbitMQ is unreachable at amqp://guest:***@127.0.0.1:" in proc.stdout
    assert "hunter2" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_required_services_turn_the_skips_into_failures(tmp_path: Path) -> None:
    proc = _run(tmp_path, require=True)
    assert proc.returncode == 1
    assert "1 passed, 3 errors" in proc.stdout  # a setup error each, with the reason
    assert "ONEX_REQUIRE_SERVICES=1 makes this a failure" in proc.stdout


@pytest.mark.slow
def test_a_fixture_adds_its_server_marker(tmp_path: Path) -> None:
    proc = _run(tmp_path, "-m", "not redis and not amqp")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 3 deselected" in proc.stdout
