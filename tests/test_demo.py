"""`onex demo`: the seed's RobustComputeService on embedded defaults and across two processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from onex_compose._demo import main


def _records(text: str) -> list[dict]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("DEMO ")]


def test_demo_on_embedded_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json"]) == 0
    out = capsys.readouterr().out
    records = _records(out)
    computed = [r for r in records if "input" in r]
    assert [r["cache_hit"] for r in computed] == [False, False, False, True, False]
    assert computed[-1]["attempts"] == 3  # two transient failures absorbed by with_retry
    assert records[-1] == {"events": 4, "healthy": True, "role": "writer"}
    for section in ("== explain ==", "== metrics ==", "== health =="):
        assert section in out
    assert "metrics: required by caching" in out
    assert '"cache_hits": 1' in out


@pytest.mark.redis
@pytest.mark.slow
def test_demo_two_processes_share_cache_events_and_invalidations(redis_url: str,
                                                                 redis_prefix: str) -> None:
    cmd = [sys.executable, "-m", "onex_compose._cli", "demo", "--json", "--redis", redis_url,
           "--namespace", redis_prefix]
    reader = subprocess.Popen([*cmd, "--role", "reader", "--timeout", "30"],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert reader.stdout is not None
        first = reader.stdout.readline()
        assert first.startswith("onex demo reader: listening on Redis")  # the human line first
        assert _records(reader.stdout.readline()) == [{"ready": True, "role": "reader"}]
        writer = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert writer.returncode == 0, writer.stderr
        rest, _ = reader.communicate(timeout=40)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0, rest
    got = _records(rest)
    events = [r for r in got if "event" in r]
    assert len(events) == 4
    for r in events:  # the writer's cache entries, read from the shared L2
        assert r["cache_value"] == r["event"]["result"]
    held = [r for r in got if "in_l1" in r]
    assert len(held) == 4 and all(r["in_l1"] for r in held)  # promoted into the reader's L1
    wrote = _records(writer.stdout)
    invalidated = [r["invalidated"] for r in wrote if "invalidated" in r]
    assert [r["invalidated"] for r in got if "invalidated" in r] == invalidated


def test_demo_prints_records_only_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    plain = capsys.readouterr().out
    assert "DEMO " not in plain  # people read this output: no machine records interleaved
    assert "(cache hit)" in plain and "computed in 3 attempt(s)" in plain
    assert "4 computation_completed event(s) received; healthy: True" in plain
    assert main(["--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [i for i, line in enumerate(lines) if line.startswith("DEMO ")]
    assert len(records) == 6
    for i in records:  # each record follows the human line it describes
        assert i > 0 and not lines[i - 1].startswith("DEMO ")
    human = [line for line in lines if not line.startswith("DEMO ")]
    cut = human.index("== metrics ==")  # timings below this line differ from run to run
    assert human[:cut] == plain.splitlines()[:cut]


def test_an_unreachable_redis_is_one_clear_message_not_a_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{s.getsockname()[1]}/0"  # nothing listens there
    assert main(["--redis", url]) == 1
    err = capsys.readouterr().err
    assert f"onex demo: cannot reach Redis at {url}" in err
    assert "Traceback" not in err
    assert main(["--redis", "http://cache:6379"]) == 1
    assert "redis_url must be a redis://" in capsys.readouterr().err


@pytest.mark.redis
def test_a_second_redis_run_computes_again(redis_url: str, redis_prefix: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # the first run's L2 entries (ttl=3600) used to turn every input of the next into a hit
    for _ in range(2):
        assert main(["--json", "--redis", redis_url, "--namespace", redis_prefix,
                     "--hold", "0"]) == 0
        computed = [r for r in _records(capsys.readouterr().out) if "input" in r]
        assert [r["cache_hit"] for r in computed] == [False, False, False, True, False]
        assert computed[-1]["attempts"] == 3
