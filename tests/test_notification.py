"""The notification capability: routing, dedup, rate limits, quiet hours, escalation, channels
(a real local SMTP server, a local webhook receiver), Redis-shared dedup, events."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import uuid
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from onex_compose import ConfigurationError, NodeEffect, compose
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities._log import logger
from onex_compose.capabilities.notification import (
    SEVERITIES,
    Notification,
    NotificationConfig,
    NotificationDeliveryError,
    NotificationError,
    Notifier,
    route,
)
from tests.conftest import free_port

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def at(text: str, tz: dt.tzinfo = BERLIN) -> float:
    """Epoch seconds of a local wall-clock time."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def make(config: dict[str, Any] | None = None, caps: tuple[str, ...] = ()) -> Any:
    cfg = {"namespace": f"t{uuid.uuid4().hex[:10]}", **(config or {})}
    cls = compose(NodeEffect, [*caps, "notification"])
    return cls(node_id="ops-1", capability_config={"notification": cfg})


def recorder(node: Any, *names: str) -> dict[str, list[Notification]]:
    got: dict[str, list[Notification]] = {n: [] for n in names}
    for name in names:
        def make_cb(name: str = name) -> Any:
            async def cb(n: Notification) -> None:
                got[name].append(n)
            return cb
        node.notifier.channel(name)(make_cb())
    return got


def counter(node: Any, name: str, **labels: str) -> float:
    total = 0.0
    for key, value in node.metrics.snapshot()["counters"].items():
        if key.split("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


CB = {"type": "callback"}


@pytest.fixture
def logs() -> Iterator[list[str]]:
    lines: list[str] = []
    logger.enable("onex_compose")
    handler = logger.add(lambda m: lines.append(str(m)), level=0, format="{message}")
    try:
        yield lines
    finally:
        logger.remove(handler)
        logger.disable("onex_compose")


# ----------------------------------------------------------------------------- config

def test_config_defaults_mirror_the_contract() -> None:
    contract = yaml.safe_load((Path(__file__).parents[1] / "capabilities" / "notification"
                               / "mixin_notification.yaml").read_text())
    section = contract["notification_config"]
    dumped = NotificationConfig().model_dump(mode="json")
    assert set(section) == set(dumped)
    for key, value in section.items():
        got = dumped[key]
        if key == "channels":
            assert got == {"log": {"type": "log", "level": None}}
        else:
            assert (list(got) if isinstance(got, tuple | list) else got) == value, key
    assert contract["composition"]["rank"] == 350


@pytest.mark.parametrize(("config", "needle"), [
    ({"channels": {"log": {"type": "log"}, "pager": CB},
      "routes": [{"match": {}, "channels": ["pagr"]}]},
     "unknown channel 'pagr' (did you mean 'pager'?)"),
    ({"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Berln"}},
     "unknown timezone 'Europe/Berln'"),
    ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "'25:00' is not a time of day as HH:MM"),
    ({"channels": {"mail": {"type": "email", "host": "127.0.0.1"}}, "default_channels": ["mail"]},
     "needs at least one recipient in 'to'"),
    ({"escalation": {"channels": ["lgo"]}}, "did you mean 'log'"),
    ({"channels": {"x": {"type": "sms"}}}, "sms"),
])
def test_config_errors_name_what_is_wrong(config: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make(config)
    assert needle in str(info.value)


def test_a_missing_backend_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "aiosmtplib" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r"pip install 'onex-compose\[email\]'"):
        make({"channels": {"mail": {"type": "email", "to": ["a@b.c"]}},
              "default_channels": ["mail"]})


def test_event_bus_channel_and_subscriptions_need_event_bus() -> None:
    with pytest.raises(ConfigurationError, match="add 'event_bus'"):
        make({"channels": {"bus": {"type": "event_bus"}}, "default_channels": ["bus"]})
    with pytest.raises(ConfigurationError, match="event_bus"):
        make({"subscribe_events": {"x.y": "warning"}})


async def test_unknown_severity_and_channel_are_errors_with_hints() -> None:
    node = make()
    with pytest.raises(NotificationError, match="did you mean 'critical'"):
        await node.notifier.notify("x", severity="critcal")
    with pytest.raises(NotificationError, match="did you mean 'log'"):
        await node.notifier.test("lg")


# ----------------------------------------------------------------------------- routing

def reference_route(routes: list[dict[str, Any]], default: list[str], severity: str,
                    title: str, tags: tuple[str, ...]) -> list[str]:
    order = {s: i for i, s in enumerate(SEVERITIES)}
    out: list[str] = []
    hit = False
    for r in routes:
        m = r["match"]
        ok = True
        if "min_severity" in m and order[severity] < order[m["min_severity"]]:
            ok = False
        if "severities" in m and severity not in m["severities"]:
            ok = False
        if "tags_any" in m and not any(t in tags for t in m["tags_any"]):
            ok = False
        if "tags_all" in m and not all(t in tags for t in m["tags_all"]):
            ok = False
        if "title_regex" in m and m["title_regex"] not in title:  # literal regexes only
            ok = False
        if ok:
            hit = True
            for c in r["channels"]:
                if c not in out:
                    out.append(c)
            if r["stop"]:
                break
    return out if hit else default


CHANNELS = ["a", "b", "c", "d"]
TAGS = ["db", "net", "disk"]
sev = st.sampled_from(SEVERITIES)
match = st.fixed_dictionaries({}, optional={
    "min_severity": sev,
    "severities": st.lists(sev, min_size=1, max_size=3, unique=True),
    "tags_any": st.lists(st.sampled_from(TAGS), min_size=1, max_size=2, unique=True),
    "tags_all": st.lists(st.sampled_from(TAGS), min_size=1, max_size=2, unique=True),
    "title_regex": st.sampled_from(["down", "slow", "DB"]),
})
routes_st = st.lists(st.fixed_dictionaries({
    "match": match, "channels": st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=3),
    "stop": st.booleans()}), max_size=5)


@settings(max_examples=200, deadline=None)
@given(routes=routes_st, severity=sev, title=st.sampled_from(["DB down", "net slow", "ok"]),
       tags=st.lists(st.sampled_from(TAGS), max_size=3, unique=True))
def test_routing_agrees_with_a_reference_evaluator(routes: list[dict[str, Any]], severity: str,
                                                   title: str, tags: list[str]) -> None:
    cfg = NotificationConfig(channels=dict.fromkeys(CHANNELS, CB), routes=routes,
                             default_channels=["d"])
    assert route(cfg, severity, title, tuple(tags)) == reference_route(
        routes, ["d"], severity, title, tuple(tags))


async def test_severities_are_ordered_and_stop_ends_routing() -> None:
    assert SEVERITIES == ("debug", "info", "warning", "error", "critical")
    node = make({"channels": {"log": {"type": "log"}, "page": CB, "chat": CB, "all": CB},
                 "routes": [{"match": {"min_severity": "error"}, "channels": ["page"],
                             "stop": False},
                            {"match": {"tags_any": ["db"]}, "channels": ["chat"]},
                            {"match": {}, "channels": ["all"]}],
                 "dedup_window": 0})
    got = recorder(node, "page", "chat", "all")
    r = await node.notifier.notify("a", severity="critical", tags=["db"])
    assert r.channels == {"page": "sent", "chat": "sent"}
    r = await node.notifier.notify("b", severity="warning")
    assert r.channels == {"all": "sent"}
    assert [n.title for n in got["page"]] == ["a"] and [n.title for n in got["all"]] == ["b"]


# ----------------------------------------------------------------------------- dedup

async def test_dedup_within_the_window_then_repeats_at_the_boundary() -> None:
    node = make({"channels": {"cb": CB}, "default_channels": ["cb"], "dedup_window": 300})
    clock = ManualClock(start=at("2026-06-01T12:00:00"))
    node.notifier.clock = clock
    got = recorder(node, "cb")
    first = await node.notifier.notify("DB down", severity="error", tags=("db", "x"))
    assert first.suppressed is None and first.repeats == 0
    for _ in range(3):
        clock.advance(99.9)
        dup = await node.notifier.notify("DB down", severity="error", tags=("x", "db"))
        assert dup.suppressed == "duplicate" and dup.channels == {}
    clock.advance(300 - 3 * 99.9 - 0.001)       # window - epsilon
    assert (await node.notifier.notify("DB down", severity="error",
                                       tags=("db", "x"))).suppressed == "duplicate"
    clock.advance(0.001)                          # the window boundary
    again = await node.notifier.notify("DB down", severity="error", tags=("db", "x"))
    assert again.suppressed is None and again.repeats == 4
    assert [n.repeats for n in got["cb"]] == [0, 4]
    assert counter(node, "notifications_total", outcome="duplicate", severity="error") == 4
    assert counter(node, "notifications_total", outcome="sent") == 2
    # a different severity or an explicit dedup_key is another notification
    assert (await node.notifier.notify("DB down", severity="critical",
                                       tags=("db", "x"))).suppressed is None
    assert (await node.notifier.notify("other", dedup_key="k1")).suppressed is None
    assert (await node.notifier.notify("other again", dedup_key="k1")).suppressed == "duplicate"


# ----------------------------------------------------------------------------- rate limits

async def test_a_channel_over_its_limit_is_skipped_and_counted_in_the_next_digest() -> None:
    node = make({"channels": {"fast": CB, "slow": CB}, "default_channels": ["fast", "slow"],
                 "channel_limits": {"slow": {"limit": 2, "period": 60}}, "dedup_window": 0})
    clock = ManualClock(start=at("2026-06-01T12:00:00"))
    node.notifier.clock = clock
    got = recorder(node, "fast", "slow")
    results = [await node.notifier.notify(f"n{i}") for i in range(5)]
    assert [r.channels["slow"] for r in results] == ["sent"] * 2 + ["rate_limited"] * 3
    assert all(r.channels["fast"] == "sent" and r.suppressed is None for r in results)
    assert len(got["fast"]) == 5 and len(got["slow"]) == 2
    clock.advance(30)                     # one unit back (60 s / 2)
    assert (await node.notifier.notify("n5")).channels["slow"] == "sent"
    assert await node.notifier.flush() == {"digests": 1, "escalations": 0}
    digest = got["slow"][-1]
    assert digest.kind == "digest" and "'slow' skipped 3 notification(s)" in digest.message


async def test_every_channel_rate_limited_suppresses_the_notification() -> None:
    node = make({"channels": {"cb": CB}, "default_channels": ["cb"],
                 "channel_limits": {"cb": {"limit": 1, "period": 3600}}, "dedup_window": 0})
    node.notifier.clock = ManualClock(start=1e9)
    recorder(node, "cb")
    assert (await node.notifier.notify("a")).suppressed is None
    r = await node.notifier.notify("b")
    assert r.suppressed == "rate_limited" and r.channels == {"cb": "rate_limited"}
    assert counter(node, "notifications_total", outcome="rate_limited") == 1


# ----------------------------------------------------------------------------- quiet hours

QUIET = {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin",
         "min_severity": "critical"}


def test_quiet_hours_follow_the_dst_change_in_berlin() -> None:
    n = Notifier({"quiet_hours": QUIET, "namespace": uuid.uuid4().hex})
    utc = dt.UTC
    # 2026-03-29: clocks go 02:00 CET -> 03:00 CEST; 07:00 local is 05:00 UTC, not 06:00
    assert n.in_quiet_hours(at("2026-03-28T21:00:00", utc))       # 22:00 CET
    assert not n.in_quiet_hours(at("2026-03-28T20:59:00", utc))
    assert n.in_quiet_hours(at("2026-03-29T01:30:00", utc))       # 03:30 CEST
    assert n.in_quiet_hours(at("2026-03-29T04:59:00", utc))       # 06:59 CEST
    assert not n.in_quiet_hours(at("2026-03-29T05:00:00", utc))   # 07:00 CEST
    assert not n.in_quiet_hours(at("2026-03-29T05:30:00", utc))   # a fixed +01:00 says 06:30


async def test_quiet_hours_defer_into_one_digest_at_the_end_across_dst() -> None:
    node = make({"channels": {"cb": CB}, "default_channels": ["cb"],
                 "quiet_hours": {**QUIET, "mode": "defer"}})
    clock = ManualClock(start=at("2026-03-28T23:30:00"))
    node.notifier.clock = clock
    node.notifier.tick_interval = 0.01
    got = recorder(node, "cb")
    r1 = await node.notifier.notify("disk 80%", "vol1", severity="warning")
    clock.advance(3 * 3600)                                         # 03:30 CEST (DST jump)
    r2 = await node.notifier.notify("disk 90%", "vol1", severity="error")
    crit = await node.notifier.notify("DB down", severity="critical")
    assert r1.suppressed == r2.suppressed == "quiet_hours"
    assert crit.suppressed is None and [n.title for n in got["cb"]] == ["DB down"]
    assert counter(node, "notifications_total", outcome="quiet") == 2
    await node.start()
    try:
        clock.now = at("2026-03-29T06:59:00")
        await asyncio.sleep(0.1)
        assert len(got["cb"]) == 1 and (await node.notifier.pending())["deferred"] == 2
        clock.now = at("2026-03-29T07:00:00")
        for _ in range(1000):
            if len(got["cb"]) > 1:
                break
            await asyncio.sleep(0.01)
    finally:
        await node.aclose()
    assert len(got["cb"]) == 2
    digest = got["cb"][1]
    assert digest.kind == "digest" and digest.severity == "error"
    assert "[WARNING] disk 80%: vol1" in digest.message and "[ERROR] disk 90%" in digest.message
    assert (await node.notifier.pending())["deferred"] == 0


async def test_quiet_hours_drop_counts_and_sends_nothing() -> None:
    node = make({"channels": {"cb": CB}, "default_channels": ["cb"],
                 "quiet_hours": {**QUIET, "mode": "drop"}})
    clock = ManualClock(start=at("2026-03-29T01:00:00"))
    node.notifier.clock = clock
    got = recorder(node, "cb")
    r = await node.notifier.notify("disk", severity="error")
    assert r.suppressed == "quiet_hours"
    clock.now = at("2026-03-29T08:00:00")
    assert await node.notifier.flush() == {"digests": 0, "escalations": 0}
    assert got["cb"] == []
    assert counter(node, "notifications_total", outcome="quiet", severity="error") == 1


# ----------------------------------------------------------------------------- escalation

async def test_escalation_after_900_s_unless_acknowledged() -> None:
    node = make({"channels": {"cb": CB, "boss": CB}, "default_channels": ["cb"],
                 "escalation": {"after": 900, "channels": ["boss"], "min_severity": "error"}})
    clock = ManualClock(start=at("2026-06-01T12:00:00"))
    node.notifier.clock = clock
    got = recorder(node, "cb", "boss")
    a = await node.notifier.notify("DB down", severity="critical")
    b = await node.notifier.notify("cache down", severity="error")
    await node.notifier.notify("fyi", severity="warning")          # below min_severity
    assert await node.notifier.acknowledge(b.id, by="alice") is True
    clock.advance(899)
    assert (await node.notifier.flush())["escalations"] == 0
    clock.advance(1)
    assert (await node.notifier.flush())["escalations"] == 1
    assert [(n.id, n.kind, n.title) for n in got["boss"]] == [
        (a.id, "escalation", "[ESCALATED] DB down")]
    assert counter(node, "notification_escalations_total") == 1
    assert await node.notifier.acknowledge(a.id) is False          # already escalated
    clock.advance(10_000)
    assert (await node.notifier.flush())["escalations"] == 0


# ----------------------------------------------------------------------------- failures

async def test_a_raising_and_a_hanging_channel_do_not_block_the_others() -> None:
    node = make({"channels": {"ok": CB, "boom": CB, "hang": CB},
                 "default_channels": ["ok", "boom", "hang"], "send_timeout": 0.3,
                 "retries": 1})
    calls = {"boom": 0}
    got = recorder(node, "ok")

    @node.notifier.channel("boom")
    def boom(n: Notification) -> None:
        calls["boom"] += 1
        raise RuntimeError("pager API said no")

    @node.notifier.channel("hang")
    async def hang(n: Notification) -> None:
        await asyncio.Event().wait()

    r = await asyncio.wait_for(node.notifier.notify("x", severity="error"), 30)
    assert r.channels["ok"] == "sent" and len(got["ok"]) == 1
    assert r.channels["boom"] == "failed: RuntimeError: pager API said no"
    assert r.channels["hang"] == "failed: timed out after 0.3 s"
    assert calls["boom"] == 2                                      # retries=1: two attempts
    assert counter(node, "notification_channel_errors_total", channel="boom") == 1
    assert counter(node, "notifications_total", outcome="sent") == 1


async def test_all_channels_failing_returns_or_raises_on_request() -> None:
    node = make({"channels": {"boom": CB}, "default_channels": ["boom"], "retries": 0,
                 "dedup_window": 0})

    @node.notifier.channel("boom")
    async def boom(n: Notification) -> None:
        raise ConnectionError("refused")

    r = await node.notifier.notify("x")
    assert not r.delivered and r.channels == {"boom": "failed: ConnectionError: refused"}
    with pytest.raises(NotificationDeliveryError) as info:
        await node.notifier.notify("x", raise_on_failure=True)
    assert info.value.errors == {"boom": "ConnectionError: refused"}
    assert isinstance(info.value, NotificationError) and info.value.onex_retriable
    assert counter(node, "notifications_total", outcome="failed") == 2


async def test_an_unregistered_callback_channel_fails_with_a_hint() -> None:
    node = make({"channels": {"pager": CB}, "default_channels": ["pager"], "retries": 0})
    r = await node.notifier.notify("x")
    assert "@node.notifier.channel('pager')" in r.channels["pager"]


def test_works_without_start_across_repeated_asyncio_run() -> None:
    node = make({"channels": {"cb": CB}, "default_channels": ["cb"], "dedup_window": 0})
    got = recorder(node, "cb")
    for _ in range(2):
        assert asyncio.run(node.notifier.notify("x")).delivered
    assert len(got["cb"]) == 2


async def test_log_and_event_bus_channels_and_test() -> None:
    node = make({"channels": {"log": {"type": "log", "level": "error"},
                              "bus": {"type": "event_bus"}},
                 "default_channels": ["log", "bus"]}, caps=("event_bus",))
    seen: list[Any] = []
    node.event_bus.subscribe("notifications.*", seen.append)
    r = await node.notifier.notify("DB down", "gone", severity="critical")
    assert r.channels == {"log": "sent", "bus": "sent"}
    await node.event_bus.drain(10)
    assert [(e.topic, e.payload["title"]) for e in seen] == [("notifications.critical",
                                                              "DB down")]
    t = await node.notifier.test("bus")
    assert t.channels == {"bus": "sent"}


# ----------------------------------------------------------------------------- email

@pytest.fixture
def smtp_server() -> Iterator[tuple[int, list[Any]]]:
    from aiosmtpd.controller import Controller

    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()


async def test_email_arrives_at_a_real_local_smtp_server(
        smtp_server: tuple[int, list[Any]]) -> None:
    from email import message_from_bytes

    port, received = smtp_server
    node = make({"channels": {"mail": {"type": "email", "host": "127.0.0.1", "port": port,
                                       "from_addr": "onex@test.local",
                                       "to": ["ops@test.local", "dba@test.local"]}},
                 "default_channels": ["mail"]})
    r = await node.notifier.notify("DB down", "primary unreachable", severity="critical",
                                   tags=("db",), data={"host": "pg1"})
    assert r.channels == {"mail": "sent"}
    (env,) = received
    assert env.mail_from == "onex@test.local"
    assert env.rcpt_tos == ["ops@test.local", "dba@test.local"]
    msg = message_from_bytes(env.content)
    assert msg["Subject"] == "[CRITICAL] DB down"
    assert msg["X-Onex-Severity"] == "critical" and msg["X-Onex-Tags"] == "db"
    assert msg["X-Onex-Notification-Id"] == r.id and msg["X-Onex-Source"] == "ops-1"
    body = msg.get_payload(decode=True).decode()
    assert "primary unreachable" in body and '"host": "pg1"' in body
    assert (await node.notifier.test("mail")).channels == {"mail": "sent"}
    assert len(received) == 2


async def test_smtp_down_is_reported_and_the_others_are_delivered(logs: list[str]) -> None:
    port = free_port()                                    # nothing listens there
    node = make({"channels": {"mail": {"type": "email", "host": "127.0.0.1", "port": port,
                                       "username": "ops", "password": "smtp-pa55-SECRET",
                                       "to": ["ops@test.local"]},
                              "cb": CB},
                 "default_channels": ["mail", "cb"], "retries": 0, "send_timeout": 5})
    got = recorder(node, "cb")
    r = await node.notifier.notify("DB down", severity="critical")
    assert r.channels["cb"] == "sent" and len(got["cb"]) == 1
    assert r.channels["mail"].startswith("failed: ")
    assert counter(node, "notification_channel_errors_total", channel="mail") == 1
    text = "\n".join(logs) + repr(node.notifier.config) + str(r)
    assert "smtp-pa55-SECRET" not in text
    assert "mail" in "\n".join(logs)


# ----------------------------------------------------------------------------- webhook

class Receiver:
    """A minimal HTTP/1.1 server on 127.0.0.1 recording requests."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((lines[0], headers, body))
        writer.write(f"HTTP/1.1 {self.status} X\r\ncontent-length: 0\r\n"
                     "connection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()


async def test_webhook_request_verifies_with_standardwebhooks(logs: list[str]) -> None:
    from standardwebhooks.webhooks import Webhook

    from onex_compose.capabilities.webhook._signing import generate_secret

    secret = generate_secret()
    async with Receiver() as rx:
        node = make({"channels": {"hook": {"type": "webhook", "secret": secret,
                                           "url": f"http://127.0.0.1:{rx.port}/alerts",
                                           "allow_http": True,
                                           "allow_private_networks": True}},
                     "default_channels": ["hook"]})
        r = await node.notifier.notify("DB down", "gone", severity="critical")
    assert r.channels == {"hook": "sent"}
    ((line, headers, body),) = rx.requests
    assert line.startswith("POST /alerts ")
    payload = Webhook(secret).verify(body, headers)
    assert payload["title"] == "DB down" and payload["id"] == r.id
    assert headers["webhook-id"] == f"msg_{r.id}"
    assert secret not in "\n".join(logs) + repr(node.notifier.config)


async def test_webhook_ssrf_checks_refuse_loopback_by_default(logs: list[str]) -> None:
    secret = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
    node = make({"channels": {"hook": {"type": "webhook", "secret": secret,
                                       "url": f"https://127.0.0.1:{free_port()}/x"}},
                 "default_channels": ["hook"], "retries": 0})
    r = await node.notifier.notify("x")
    assert r.channels["hook"].startswith("failed: WebhookTargetError")
    assert "c2VjcmV0LXNlY3JldC1zZWNyZXQ" not in "\n".join(logs) + str(r)


# ----------------------------------------------------------------------------- redis

SUBPROCESS = """
import asyncio, json, sys
from onex_compose.capabilities.notification import Notifier
n = Notifier({"backend": "redis", "redis_url": sys.argv[1], "namespace": sys.argv[2],
              "channels": {"log": {"type": "log"}}})
r = asyncio.run(n.notify("DB down", severity="critical", tags=("db",)))
print(json.dumps({"suppressed": r.suppressed, "repeats": r.repeats}))
"""


@pytest.mark.redis
async def test_two_processes_share_dedup_on_redis(redis_url: str, redis_prefix: str) -> None:
    node = make({"backend": "redis", "redis_url": redis_url, "namespace": redis_prefix,
                 "channels": {"cb": CB}, "default_channels": ["cb"]})
    got = recorder(node, "cb")
    first = await node.notifier.notify("DB down", severity="critical", tags=("db",))
    assert first.suppressed is None and len(got["cb"]) == 1

    def other() -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-c", SUBPROCESS, redis_url, redis_prefix],
                             capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert await asyncio.to_thread(other) == {"suppressed": "duplicate", "repeats": 0}


@pytest.mark.redis
async def test_redis_dedup_window_and_repeats(redis_url: str, redis_prefix: str) -> None:
    node = make({"backend": "redis", "redis_url": redis_url, "namespace": redis_prefix,
                 "channels": {"cb": CB}, "default_channels": ["cb"], "dedup_window": 60,
                 "channel_limits": {"cb": {"limit": 5, "period": 60}}})
    clock = ManualClock(start=at("2026-06-01T12:00:00"))
    node.notifier.clock = clock
    recorder(node, "cb")
    assert (await node.notifier.notify("a")).suppressed is None
    clock.advance(59.9)
    assert (await node.notifier.notify("a")).suppressed == "duplicate"
    clock.advance(0.1)
    r = await node.notifier.notify("a")
    assert r.suppressed is None and r.repeats == 1


@pytest.mark.redis
async def test_redis_shares_escalations_and_the_digest_between_notifiers(
        redis_url: str, redis_prefix: str) -> None:
    cfg = {"backend": "redis", "redis_url": redis_url, "namespace": redis_prefix,
           "channels": {"cb": CB, "boss": CB}, "default_channels": ["cb"],
           "quiet_hours": {**QUIET, "mode": "defer"},
           "escalation": {"after": 900, "channels": ["boss"], "min_severity": "error"}}
    a, b = make(cfg), make(cfg)
    clock = ManualClock(start=at("2026-03-29T01:00:00"))
    a.notifier.clock = b.notifier.clock = clock
    got_a, got_b = recorder(a, "cb", "boss"), recorder(b, "cb", "boss")
    crit = await a.notifier.notify("DB down", severity="critical")
    acked = await a.notifier.notify("cache down", severity="critical")
    assert await b.notifier.acknowledge(acked.id, by="bob") is True     # another process
    assert (await a.notifier.notify("disk", severity="warning")).suppressed == "quiet_hours"
    assert (await b.notifier.pending()) == {"deferred": 1, "skipped": 0, "escalations": 1}
    clock.advance(900)
    assert await b.notifier.flush() == {"digests": 1, "escalations": 1}
    assert await a.notifier.flush() == {"digests": 0, "escalations": 0}  # taken once
    assert [n.id for n in got_b["boss"]] == [crit.id] and got_a["boss"] == []
    assert [n.kind for n in got_b["cb"]] == ["digest"]
    assert "[WARNING] disk" in got_b["cb"][0].message


async def test_a_redis_outage_degrades_to_local_state_logged_once(
        private_redis: Any, logs: list[str]) -> None:
    node = make({"backend": "redis", "redis_url": private_redis.url,
                 "channels": {"cb": CB}, "default_channels": ["cb"]},
                caps=("health_check",))
    got = recorder(node, "cb")
    assert (await node.notifier.notify("a")).suppressed is None
    assert node.notifier.health()["status"] == "healthy"
    private_redis.stop()
    r1 = await node.notifier.notify("b")
    r2 = await node.notifier.notify("b")
    assert r1.suppressed is None and r2.suppressed == "duplicate"     # local dedup
    assert len(got["cb"]) == 2
    health = node.notifier.health()
    assert health["status"] == "degraded" and "Redis unreachable" in health["reason"]
    assert sum("Redis unreachable" in line for line in logs) == 1
    assert counter(node, "notification_backend_errors_total") >= 2
    private_redis.start()
    assert (await node.notifier.notify("c")).suppressed is None
    assert node.notifier.health()["status"] == "healthy"


# ----------------------------------------------------------------------------- events

async def test_a_registry_offline_change_becomes_a_warning_notification() -> None:
    ns = f"t{uuid.uuid4().hex[:10]}"
    cls = compose(NodeEffect, ["event_bus", "service_registry", "notification"])
    node = cls(node_id="api-1", capability_config={
        "event_bus": {"namespace": ns},
        "service_registry": {"namespace": ns, "ttl": 15, "auto_register": False},
        "notification": {"namespace": ns, "channels": {"cb": CB}, "default_channels": ["cb"],
                         "subscribe_events": {"service_registry.changed": "warning"}}})
    got = recorder(node, "cb")
    clock = ManualClock(start=1_000_000.0)
    node.service_registry.clock = clock
    await node.start()
    try:
        await node.service_registry.register()
        clock.advance(60)
        await node.service_registry.sweep()
        for _ in range(1000):
            if got["cb"]:
                break
            await asyncio.sleep(0.01)
    finally:
        await node.aclose()
    (n,) = got["cb"]                       # registered is not a notification, offline is
    assert n.severity == "warning" and n.title.startswith("service offline: ")
    assert "service_registry.changed" in n.tags


# ----------------------------------------------------------------------------- docs

def test_docstring_examples() -> None:
    import doctest

    import onex_compose.capabilities.notification as pkg
    from onex_compose.capabilities.notification import _channels, _model, _notifier, _store

    for module in (pkg, _model, _notifier, _channels, _store):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


async def test_retries_go_through_with_retry_when_retry_is_composed() -> None:
    node = make({"channels": {"flaky": CB}, "default_channels": ["flaky"], "retries": 2},
                caps=("retry",))
    assert node.notifier.retry is not None
    calls: list[int] = []

    @node.notifier.channel("flaky")
    async def flaky(n: Notification) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("try again")

    r = await asyncio.wait_for(node.notifier.notify("x", severity="error"), 60)
    assert r.channels == {"flaky": "sent"} and len(calls) == 3


def test_webhook_policy_is_widened_by_the_webhook_capability_policy() -> None:
    from onex_compose.capabilities.notification._channels import policy_for
    from onex_compose.capabilities.notification._model import WebhookChannel
    from onex_compose.capabilities.webhook._ssrf import TargetPolicy

    ch = WebhookChannel(type="webhook", url="https://hooks.example.com/x",
                        allowed_hosts=("hooks.example.com",))
    own = policy_for(ch)
    assert (own.allow_http, own.allow_private_networks, own.allowed_hosts) == (
        False, False, ("hooks.example.com",))
    node = TargetPolicy(allow_http=True, allowed_hosts=("*.corp",), allowed_ports=(443,))
    both = policy_for(ch, node)
    assert both.allow_http and not both.allow_private_networks
    assert both.allowed_hosts == ("hooks.example.com", "*.corp")
    assert both.allowed_ports == (443,)
