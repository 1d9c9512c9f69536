"""webhook: Standard Webhooks interop, delivery to a local server (retries, Retry-After, 4xx, 410,
timeouts, redirects, disabling), the outbox, the SSRF table (no connection attempted), DNS
rebinding, incoming verification, the ASGI receiver, health, metrics and config.

No test sends traffic to a non-loopback address: an autouse fixture makes any connect or name
lookup to anything but loopback fail the test, and every test injects the resolver."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import ipaddress
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import standardwebhooks

from onex_compose import NodeEffect, compose
from onex_compose.capabilities import _context
from onex_compose.capabilities.webhook import (
    DISABLED_EVENT,
    Signer,
    TargetPolicy,
    Verifier,
    WebhookConfig,
    WebhookError,
    WebhookNotFoundError,
    WebhookPayloadTooLargeError,
    WebhookTargetError,
    WebhookVerificationError,
    generate_secret,
    is_public_address,
    normalize_ip,
    parse_retry_after,
    sign,
    vet,
)
from onex_compose.exceptions import ConfigurationError, OnexError

PUBLIC_IP = "93.184.215.14"   # example.com's documented address: never contacted (recorded only)


# -- no traffic off the machine ------------------------------------------------------------------


def _loopback(host: Any) -> bool:
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
    except ValueError:
        return str(host) == "localhost"


@pytest.fixture(autouse=True)
def _no_external_traffic(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Any connect or name lookup that is not loopback fails the test (and is recorded)."""
    attempts: list[Any] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def guard(address: Any) -> None:
        if isinstance(address, tuple) and not _loopback(address[0]):
            attempts.append(address)
            raise AssertionError(f"test tried to connect to a non-loopback address {address}")

    def connect(self: socket.socket, address: Any) -> Any:
        guard(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        guard(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _loopback(host):
            attempts.append(("dns", host))
            raise AssertionError(f"test tried to resolve {host!r} (inject the resolver)")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert attempts == [], f"non-loopback traffic was attempted: {attempts}"


# -- the local server ----------------------------------------------------------------------------


class Hook:
    """A stdlib ThreadingHTTPServer on 127.0.0.1:0 answering from a script of responses."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[int, dict[str, str], float]] = []
        self.default: tuple[int, dict[str, str], float] = (200, {}, 0.0)
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with hook.lock:
                    hook.requests.append({"path": self.path, "headers": dict(self.headers.items()),
                                          "body": body, "at": time.time()})
                    status, headers, sleep = hook.script.pop(0) if hook.script else hook.default
                if sleep:
                    time.sleep(sleep)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    try:
        yield server
    finally:
        server.close()


# -- nodes ---------------------------------------------------------------------------------------


class Resolver:
    """An injected resolver: a table of names; anything else is unresolvable."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = {"localhost": ["127.0.0.1"], "hooks.example.com": [PUBLIC_IP],
                      **(table or {})}
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


class Recorder:
    """An httpx transport that records what would have been sent and answers 200."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[httpx.Request] = []
        self.status = status

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return httpx.Response(self.status)

        return httpx.MockTransport(handle)


WebhookNode = compose(NodeEffect, ["webhook"])
BusNode = compose(NodeEffect, ["webhook", "event_bus"])


def make(cls: Any = WebhookNode, *, resolver: Resolver | None = None, clock: Any = None,
         autostart: bool = True, extra: dict[str, Any] | None = None, **cfg: Any) -> Any:
    config = {"allow_http": True, "allow_private_networks": True, "jitter": 0.0, **cfg}
    node = cls(capability_config={"database": {"namespace": f"wh{uuid.uuid4().hex[:10]}"},
                                  "webhook": config, **(extra or {})})
    node.webhooks.resolver = resolver or Resolver()
    if clock is not None:
        node.webhooks.clock = clock
    node.webhooks.autostart = autostart
    return node


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    nodes: list[Any] = []
    yield nodes
    for node in nodes:
        await node.webhooks.aclose()


async def only(node: Any) -> Any:
    [d] = await node.webhooks.deliveries()
    return d


# -- signing: interop with the reference library -------------------------------------------------


async def test_our_outgoing_request_verifies_with_standardwebhooks(hook: Hook, closing: list[Any]
                                                                   ) -> None:
    node = make()
    closing.append(node)
    sub = await node.webhooks.subscribe(hook.url, ["order.*"])
    [did] = await node.webhooks.publish("order.created", {"id": 1})
    assert await node.webhooks.drain(timeout=30)
    [req] = hook.requests
    headers = {k.lower(): v for k, v in req["headers"].items()}
    payload = standardwebhooks.Webhook(sub.secret).verify(req["body"], headers)
    assert payload["type"] == "order.created" and payload["data"] == {"id": 1}
    datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
    d = await only(node)
    assert (d.id, d.status, d.attempts, d.last_status_code) == (did, "delivered", 1, 200)
    assert headers["webhook-id"] == d.msg_id
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("onex-compose-webhooks/")
    assert headers["host"] == f"127.0.0.1:{hook.port}"


def test_a_request_signed_by_standardwebhooks_passes_our_verify() -> None:
    secret = generate_secret()
    node = make()
    body = json.dumps({"type": "x", "data": {"a": 1}})
    now = datetime.now(UTC)
    sig = standardwebhooks.Webhook(secret).sign("msg_abc", now, body)
    headers = {"webhook-id": "msg_abc", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": sig}
    assert node.webhooks.verify(body, headers, secret=secret) == {"type": "x", "data": {"a": 1}}


def test_sign_matches_the_reference_implementation_byte_for_byte() -> None:
    secret = generate_secret()
    at = datetime.fromtimestamp(1_700_000_000, UTC)
    ours = sign("msg_1", 1_700_000_000, b'{"a":1}', secret)
    assert ours == standardwebhooks.Webhook(secret).sign("msg_1", at, '{"a":1}')
    assert Signer([secret]).signature("msg_1", 1_700_000_000, b'{"a":1}') == ours


async def test_rotation_sends_both_signatures_and_either_secret_verifies(
        hook: Hook, closing: list[Any]) -> None:
    node = make()
    closing.append(node)
    sub = await node.webhooks.subscribe(hook.url, ["*"])
    new = await node.webhooks.rotate_secret(sub.id, overlap=3600)
    assert new != sub.secret and new.startswith("whsec_")
    await node.webhooks.publish("a", {"n": 1})
    assert await node.webhooks.drain(timeout=30)
    [req] = hook.requests
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (sub.secret, new):
        assert standardwebhooks.Webhook(secret).verify(req["body"], headers)["data"] == {"n": 1}
        assert Verifier([secret]).verify(req["body"], headers)["data"] == {"n": 1}


async def test_after_the_overlap_only_the_new_secret_signs(closing: list[Any]) -> None:
    clock = _context.ManualClock(1_700_000_000)
    rec = Recorder()
    node = make(clock=clock, autostart=False)
    closing.append(node)
    node.webhooks.transport = rec.transport()
    sub = await node.webhooks.subscribe("https://hooks.example.com/in", ["*"])
    new = await node.webhooks.rotate_secret(sub.id, overlap=60)
    clock.advance(61)
    await node.webhooks.publish("a", 1)
    assert await node.webhooks.step() == 1
    sig = rec.requests[0].headers["webhook-signature"]
    assert " " not in sig
    verifier = Verifier([new], clock=clock)
    assert verifier.verify(rec.requests[0].content, dict(rec.requests[0].headers))["data"] == 1
    with pytest.raises(WebhookVerificationError):
        Verifier([sub.secret], clock=clock).verify(rec.requests[0].content,
                                                   dict(rec.requests[0].headers))


# -- delivery to a local server ------------------------------------------------------------------


async def test_503_503_200_is_delivered_on_the_third_attempt_at_the_scheduled_times(
        hook: Hook, closing: list[Any]) -> None:
    clock = _context.ManualClock(1_700_000_000)
    node = make(clock=clock, autostart=False, retry_schedule=[5, 300, 1800])
    closing.append(node)
    hook.script = [(503, {}, 0), (503, {}, 0)]
    await node.webhooks.subscribe(hook.url, ["*"])
    await node.webhooks.publish("a", {"n": 1})
    t0 = clock()
    assert await node.webhooks.step() == 1
    d = await only(node)
    assert (d.status, d.attempts, d.last_status_code, d.next_attempt_at) == \
        ("pending", 1, 503, t0 + 5)
    clock.advance(4.9)
    assert await node.webhooks.step() == 0          # not before its time
    clock.advance(0.1)
    assert await node.webhooks.step() == 1
    d = await only(node)
    assert (d.attempts, d.next_attempt_at) == (2, t0 + 305)
    clock.advance(300)
    assert await node.webhooks.step() == 1
    d = await only(node)
    assert (d.status, d.attempts, d.last_status_code) == ("delivered", 3, 200)
    ids = {r["headers"]["webhook-id"] for r in hook.requests}
    stamps = [int(r["headers"]["webhook-timestamp"]) for r in hook.requests]
    assert len(ids) == 1                             # stable across retries
    assert stamps == [int(t0), int(t0 + 5), int(t0 + 305)]   # fresh per attempt


async def test_jitter_scales_the_delay_within_its_bounds(hook: Hook, closing: list[Any]) -> None:
    clock = _context.ManualClock(1_700_000_000)
    node = make(clock=clock, autostart=False, retry_schedule=[100], jitter=0.2)
    closing.append(node)
    hook.default = (500, {}, 0)
    await node.webhooks.subscribe(hook.url, ["*"])
    await node.webhooks.publish("a", 1)
    await node.webhooks.publish("a", 2)
    assert await node.webhooks.step() == 2
    delays = [d.next_attempt_at - clock() for d in await node.webhooks.deliveries()]
    assert all(80 <= x <= 120 for x in delays), delays


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_429_retry_after_sets_the_next_attempt(form: str, hook: Hook, closing: list[Any]
                                                     ) -> None:
    clock = _context.ManualClock(1_700_000_000)
    node = make(clock=clock, autostart=False)
    closing.append(node)
    value = "7" if form == "seconds" else email.utils.formatdate(clock() + 42, usegmt=True)
    hook.script = [(429, {"Retry-After": value}, 0)]
    await node.webhooks.subscribe(hook.url, ["*"])
    await node.webhooks.publish("a", 1)
    await node.webhooks.step()
    d = await only(node)
    assert (d.status, d.last_status_code) == ("pending", 429)
    assert d.next_attempt_at == clock() + (7 if form == "seconds" else 42)


async def test_retry_after_is_capped(hook: Hook, closing: list[Any]) -> None:
    clock = _context.ManualClock(1_700_000_000)
    node = make(clock=clock, autostart=False, max_retry_after=60)
    closing.append(node)
    hook.script = [(503, {"Retry-After": "86400"}, 0)]
    await node.webhooks.subscribe(hook.url, ["*"])
    await node.webhooks.publish("a", 1)
    await node.webhooks.step()
    assert (await only(node)).next_attempt_at == clock() + 60


async def test_400_fails_at_once(hook: Hook, closing: list[Any]) -> None:
    node = make(autostart=False)
    closing.append(node)
    hook.default = (400, {}, 0)
    sub = await node.webhooks.subscribe(hook.url, ["*"])
    await node.webhooks.publish("a", 1)
    await node.webhooks.step()
    d = await only(node)
    assert (d.status, d.attempts, d.last_status_code, d.next_attempt_at) == ("failed", 1, 400, None)
    assert "HTTP 400" in (d.last_error or "")
    assert await node.webhooks.step() == 0
    assert [s.active for s in await node.webhooks.subscriptions() if s.id == sub.id] == [True]


async def test_410_disables_the_subscription(hook: Hook, closing: list[Any]) -> None:
    node = make(autostart=False)
    closing.append(node)
    hook.default = (410, {}, 0)
    sub = await node.webhooks.subscribe(hook.url, ["*"])
    await node.webhooks.publish("a", 1)
    await node.webhooks.step()
    assert (await only(node)).status == "failed"
    [s] = await node.webhooks.subscriptions()
    assert (s.id, s.active) == (sub.id, False)
    assert await node.webhooks.publish("a", 2) == []          # inactive: nothing written


async def test_a_server_sleeping_past_the_timeout_is_retried(hook: Hook, closing: list[Any]) -> None:
    node = make(autostart=False, timeout=0.3)
    closing.append(node)
    hook.script = [(200, {}, 2.0)]
    await node.webhooks.subscribe(hook.url, ["*"])
    await node.webhooks.publish("a", 1)
    await node.webhooks.step()
    d = await only(node)
    assert (d.status, d.attempts, d.last_status_code) == ("pending", 1, None)
    assert "timeout" in (d.last_error or "").lower()
    snap = node.metrics.snapshot()["counters"]
    assert any("webhook_delivery_attempts_total" in k and "error" in k for k in snap), snap


async def test_five_exhausted_deliveries_disable_the_subscription_and_publish_the_event(
        hook: Hook, closing: list[Any]) -> None:
    node = make(BusNode, autostart=False, retry_schedule=[])
    closing.append(node)
    seen: list[Any] = []
    node.event_bus.subscribe(DISABLED_EVENT, lambda event: seen.append(event.payload))
    hook.default = (500, {}, 0)
    sub = await node.webhooks.subscribe(hook.url, ["*"])
    for i in range(4):
        await node.webhooks.publish("a", i)
        await node.webhooks.step()
    assert [s.active for s in await node.webhooks.subscriptions()] == [True]
    assert [d.status for d in await node.webhooks.deliveries()] == ["dead"] * 4
    await node.webhooks.publish("a", 4)
    await node.webhooks.step()
    await node.event_bus.drain()
    assert [s.active for s in await node.webhooks.subscriptions()] == [False]
    assert len(seen) == 1 and seen[0]["subscription_id"] == sub.id
    assert "5 consecutive" in seen[0]["reason"]
    # re-activating resets the count
    await node.webhooks.update(sub.id, active=True)
    assert [s.active for s in await node.webhooks.subscriptions()] == [True]


async def test_a_success_resets_the_consecutive_failures(hook: Hook, closing: list[Any]) -> None:
    node = make(autostart=False, retry_schedule=[], disable_after_failed_deliveries=2)
    closing.append(node)
    hook.script = [(500, {}, 0), (200, {}, 0), (500, {}, 0)]
    await node.webhooks.subscribe(hook.url, ["*"])
    for i in range(3):
        await node.webhooks.publish("a", i)
        await node.webhooks.step()
    assert [s.active for s in await node.webhooks.subscriptions()] == [True]


async def test_a_302_is_a_failure_and_no_second_request_is_made(hook: Hook, closing: list[Any]
                                                                ) -> None:
    node = make(autostart=False)
    closing.append(node)
    hook.script = [(302, {"Location": f"http://127.0.0.1:{hook.port}/elsewhere"}, 0)]
    await node.webhooks.subscribe(hook.url, ["*"])
    await node.webhooks.publish("a", 1)
    await node.webhooks.step()
    d = await only(node)
    assert (d.status, d.last_status_code) == ("failed", 302)
    assert "redirects are not followed" in (d.last_error or "")
    assert [r["path"] for r in hook.requests] == ["/hook"]


async def test_connection_refused_is_retried(closing: list[Any]) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                                    # nothing listens there now
    node = make(autostart=False)
    closing.append(node)
    await node.webhooks.subscribe(f"http://127.0.0.1:{port}/", ["*"])
    await node.webhooks.publish("a", 1)
    await node.webhooks.step()
    d = await only(node)
    assert (d.status, d.last_status_code) == ("pending", None)
    assert d.last_error


async def test_the_response_body_is_kept_up_to_the_limit(closing: list[Any]) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, content=b"x" * 5000)

    node = make(autostart=False, max_response_bytes=100)
    closing.append(node)
    node.webhooks.transport = httpx.MockTransport(handle)
    await node.webhooks.subscribe("https://hooks.example.com/in", ["*"])
    await node.webhooks.publish("a", 1)
    await node.webhooks.step()
    assert (await only(node)).last_error == "HTTP 400: " + "x" * 100


async def test_retry_delivery_sends_a_failed_delivery_again(hook: Hook, closing: list[Any]) -> None:
    node = make(autostart=False)
    closing.append(node)
    hook.script = [(400, {}, 0)]
    await node.webhooks.subscribe(hook.url, ["*"])
    [did] = await node.webhooks.publish("a", 1)
    await node.webhooks.step()
    await node.webhooks.retry_delivery(did)
    await node.webhooks.step()
    d = await only(node)
    assert (d.status, d.attempts) == ("delivered", 1)
    with pytest.raises(WebhookNotFoundError):
        await node.webhooks.retry_delivery("dlv_missing")


# -- the outbox ----------------------------------------------------------------------------------


async def test_publish_inside_a_transaction_that_raises_writes_and_sends_nothing(
        hook: Hook, closing: list[Any]) -> None:
    node = make()
    closing.append(node)
    await node.webhooks.subscribe(hook.url, ["*"])
    await node.db.execute("CREATE TABLE orders (id INTEGER)")
    with pytest.raises(RuntimeError):
        async with node.db.transaction() as tx:
            await tx.execute("INSERT INTO orders (id) VALUES (1)")
            assert len(await node.webhooks.publish("order.created", {"id": 1})) == 1
            raise RuntimeError("the caller's work failed")
    assert await node.webhooks.deliveries() == []
    assert await node.db.fetch_val("SELECT COUNT(*) FROM orders") == 0
    assert await node.webhooks.drain(timeout=30)
    assert hook.requests == []
    # and a committed transaction's rows are sent
    async with node.db.transaction() as tx:
        await tx.execute("INSERT INTO orders (id) VALUES (2)")
        await node.webhooks.publish("order.created", {"id": 2})
    assert await node.webhooks.drain(timeout=30)
    assert len(hook.requests) == 1


async def test_publish_matches_patterns_and_skips_inactive_subscriptions(closing: list[Any]) -> None:
    node = make(autostart=False)
    closing.append(node)
    a = await node.webhooks.subscribe("https://hooks.example.com/a", ["order.*"])
    b = await node.webhooks.subscribe("https://hooks.example.com/b", ["user.created", "order.paid"])
    c = await node.webhooks.subscribe("https://hooks.example.com/c", ["*"])
    await node.webhooks.update(c.id, active=False)
    await node.webhooks.publish("order.created", 1)
    await node.webhooks.publish("order.paid", 2)
    await node.webhooks.publish("user.created", 3)
    got = sorted((d.subscription_id, d.event_type) for d in await node.webhooks.deliveries())
    assert got == sorted([(a.id, "order.created"), (a.id, "order.paid"), (b.id, "order.paid"),
                          (b.id, "user.created")])
    assert len(await node.webhooks.deliveries(subscription_id=a.id)) == 2
    assert len(await node.webhooks.deliveries(status="pending")) == 4


async def test_an_idempotency_key_returns_the_first_ids(closing: list[Any]) -> None:
    node = make(autostart=False)
    closing.append(node)
    await node.webhooks.subscribe("https://hooks.example.com/a", ["*"])
    await node.webhooks.subscribe("https://hooks.example.com/b", ["*"])
    first = await node.webhooks.publish("a", 1, idempotency_key="k1")
    again = await node.webhooks.publish("a", 1, idempotency_key="k1")
    assert len(first) == 2 and sorted(first) == again
    assert len(await node.webhooks.deliveries()) == 2


async def test_publish_rejects_oversize_and_unserializable_payloads(closing: list[Any]) -> None:
    from onex_compose.capabilities.serialization import SerializationError

    node = make(autostart=False, max_payload_bytes=200)
    closing.append(node)
    await node.webhooks.subscribe("https://hooks.example.com/a", ["*"])
    with pytest.raises(WebhookPayloadTooLargeError) as info:
        await node.webhooks.publish("a", {"blob": "x" * 500})
    assert isinstance(info.value, ValueError) and info.value.limit == 200
    with pytest.raises(SerializationError):
        await node.webhooks.publish("a", {"bad": object()})
    with pytest.raises(ValueError):
        await node.webhooks.publish("", 1)
    assert await node.webhooks.deliveries() == []


async def test_unknown_subscription_ids_raise_a_key_error(closing: list[Any]) -> None:
    node = make(autostart=False)
    closing.append(node)
    for call in (node.webhooks.rotate_secret("sub_x"), node.webhooks.update("sub_x", events=["a"]),
                 node.webhooks.unsubscribe("sub_x")):
        with pytest.raises(WebhookNotFoundError) as info:
            await call
        assert isinstance(info.value, KeyError) and isinstance(info.value, WebhookError)
        assert "sub_x" in str(info.value)


async def test_unsubscribe_fails_its_pending_deliveries(closing: list[Any]) -> None:
    node = make(autostart=False)
    closing.append(node)
    sub = await node.webhooks.subscribe("https://hooks.example.com/a", ["*"])
    await node.webhooks.publish("a", 1)
    await node.webhooks.unsubscribe(sub.id)
    d = await only(node)
    assert (d.status, d.last_error) == ("failed", "unsubscribed")
    assert await node.webhooks.subscriptions() == []


async def test_subscribe_keeps_a_given_secret_and_returns_it_once(closing: list[Any]) -> None:
    node = make(autostart=False)
    closing.append(node)
    secret = generate_secret()
    sub = await node.webhooks.subscribe("https://hooks.example.com/a", ["*"], secret=secret,
                                        description="orders")
    assert sub.secret == secret and "whsec" not in repr(sub)
    [listed] = await node.webhooks.subscriptions()
    assert listed.secret is None and listed.description == "orders"
    with pytest.raises(ValueError, match="whsec_"):
        await node.webhooks.subscribe("https://hooks.example.com/a", ["*"], secret="not base64!")
    with pytest.raises(ValueError, match="events"):
        await node.webhooks.subscribe("https://hooks.example.com/a", [])


# -- SSRF ----------------------------------------------------------------------------------------

SSRF_TABLE = [
    ("https://127.0.0.1/", "private_address", True),
    ("https://localhost/", "private_address", True),
    ("https://[::1]/", "private_address", True),
    ("https://10.0.0.1/", "private_address", True),
    ("https://172.16.0.1/", "private_address", True),
    ("https://192.168.1.1/", "private_address", True),
    ("https://169.254.169.254/latest/meta-data", "private_address", True),
    ("https://100.64.0.1/", "private_address", True),
    ("https://0.0.0.0/", "private_address", True),
    ("https://[::ffff:127.0.0.1]/", "private_address", True),
    ("https://[fe80::1]/", "private_address", True),
    ("https://[fc00::1]/", "private_address", True),
    ("https://224.0.0.1/", "private_address", True),
    ("https://[::]/", "private_address", True),
    ("http://2130706433/", "private_address", True),
    ("http://0177.0.0.1/", "private_address", True),
    ("http://0x7f.0.0.1/", "private_address", True),
    ("https://internal.test/", "private_address", True),
    ("https://mixed.test/", "private_address", True),
    ("https://user:pw@hooks.example.com/", "userinfo", True),
    ("http://hooks.example.com/", "scheme", False),
    ("ftp://hooks.example.com/", "scheme", True),
    ("https://nowhere.test/", "unresolvable", True),
]


def _ssrf_resolver() -> Resolver:
    return Resolver({"internal.test": ["10.0.0.5"], "mixed.test": [PUBLIC_IP, "10.0.0.5"]})


@pytest.mark.parametrize(("url", "reason", "allow_http"), SSRF_TABLE)
async def test_ssrf_table_refused_at_subscribe_with_no_connection(
        url: str, reason: str, allow_http: bool, closing: list[Any]) -> None:
    rec = Recorder()
    node = make(autostart=False, allow_private_networks=False, allow_http=allow_http,
                resolver=_ssrf_resolver())
    closing.append(node)
    node.webhooks.transport = rec.transport()
    with pytest.raises(WebhookTargetError) as info:
        await node.webhooks.subscribe(url, ["*"])
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError) and isinstance(info.value, OnexError)
    assert "pw" not in str(info.value)
    assert rec.requests == []
    assert await node.webhooks.subscriptions() == []


@pytest.mark.parametrize(("url", "reason", "allow_http"), SSRF_TABLE)
async def test_ssrf_table_refused_again_at_every_attempt_with_no_connection(
        url: str, reason: str, allow_http: bool, closing: list[Any]) -> None:
    """The subscription was allowed when made (a permissive node wrote it); the attempt, under
    the strict policy, refuses it and records the delivery as failed without connecting
    (``unresolvable`` is retried)."""
    rec = Recorder()
    namespace = f"wh{uuid.uuid4().hex[:10]}"
    loose = WebhookNode(capability_config={"database": {"namespace": namespace}, "webhook": {
        "allow_http": True, "allow_private_networks": True}})
    loose.webhooks.resolver = Resolver({"nowhere.test": [PUBLIC_IP],
                                        "internal.test": [PUBLIC_IP], "mixed.test": [PUBLIC_IP]})
    try:
        await loose.webhooks.subscribe(url, ["*"])
    except WebhookTargetError as exc:   # userinfo and ftp are refused even by the loose node:
        assert exc.reason in ("userinfo", "scheme")   # write the row directly
        await loose.webhooks._migrated()
        await loose.db.execute(
            f"INSERT INTO {loose.webhooks.subs_table} (id, url, events, secrets, description, "
            "active, failures, created_at) VALUES ('sub_raw', :url, '[\"*\"]', :s, '', 1, 0, 0)",
            {"url": url, "s": json.dumps([[generate_secret(), None]])})
        await loose.db.execute(f"INSERT INTO {loose.webhooks.patterns_table} "
                               "(subscription_id, pattern) VALUES ('sub_raw', '*')")
    strict = WebhookNode(capability_config={"database": {"namespace": namespace}, "webhook": {
        "allow_http": allow_http, "allow_private_networks": False, "jitter": 0}})
    strict.webhooks.resolver = _ssrf_resolver()
    strict.webhooks.transport = rec.transport()
    strict.webhooks.autostart = False
    closing.extend([loose, strict])
    await strict.webhooks.publish("a", 1)
    assert await strict.webhooks.step() == 1
    d = await only(strict)
    assert rec.requests == []
    if reason == "unresolvable":
        assert (d.status, d.next_attempt_at is not None) == ("pending", True)
    else:
        assert d.status == "failed" and f"refused ({reason})" in (d.last_error or "")
        assert await strict.webhooks.step() == 0      # not retried
    snap = strict.metrics.snapshot()["counters"]
    outcome = "retry_scheduled" if reason == "unresolvable" else "refused"
    assert any("webhook_deliveries_total" in k and outcome in k for k in snap), snap


@pytest.mark.parametrize(("url", "reason"), [
    ("https://other.example.org/", "host_not_allowed"),
    ("https://hooks.example.com:8443/", "port"),
])
async def test_allowed_hosts_and_ports(url: str, reason: str, closing: list[Any]) -> None:
    node = make(autostart=False, allow_private_networks=False,
                allowed_hosts=["*.example.com", "intranet.corp"], allowed_ports=[443],
                resolver=Resolver({"other.example.org": [PUBLIC_IP],
                                   "intranet.corp": ["10.1.2.3"]}))
    closing.append(node)
    with pytest.raises(WebhookTargetError) as info:
        await node.webhooks.subscribe(url, ["*"])
    assert info.value.reason == reason
    # an allowed host lifts the private-address refusal for that host only
    sub = await node.webhooks.subscribe("https://intranet.corp/in", ["*"])
    assert sub.active


async def test_dns_rebinding_the_connection_goes_to_the_vetted_ip(closing: list[Any]) -> None:
    rec = Recorder()
    resolver = Resolver({"rebind.test": [PUBLIC_IP]})
    node = make(autostart=False, allow_private_networks=False, resolver=resolver)
    closing.append(node)
    node.webhooks.transport = rec.transport()
    await node.webhooks.subscribe("https://rebind.test/in?x=1", ["*"])
    await node.webhooks.publish("a", 1)
    await node.webhooks.step()
    [req] = rec.requests
    assert req.url.host == PUBLIC_IP and req.url.path == "/in" and req.url.query == b"x=1"
    assert req.headers["host"] == "rebind.test"
    assert req.extensions["sni_hostname"] == "rebind.test"
    # the name now answers a private address: the next attempt is refused, nothing is sent
    resolver.table["rebind.test"] = ["127.0.0.1"]
    await node.webhooks.publish("a", 2)
    await node.webhooks.step()
    assert len(rec.requests) == 1
    statuses = sorted(d.status for d in await node.webhooks.deliveries())
    assert statuses == ["delivered", "failed"]


async def test_the_pinned_url_keeps_a_non_default_port_and_brackets_ipv6() -> None:
    async def v6(host: str, port: int) -> list[str]:
        return ["2606:2800:220:1:248:1893:25c8:1946"]

    target = await vet("https://six.test:8443/p", TargetPolicy(), resolver=v6)
    assert target.pinned_url == "https://[2606:2800:220:1:248:1893:25c8:1946]:8443/p"
    assert (target.host_header, target.sni) == ("six.test:8443", "six.test")
    literal = await vet("https://93.184.215.14/", TargetPolicy())
    assert literal.sni is None and literal.host_header == PUBLIC_IP


def test_address_helpers() -> None:
    assert str(normalize_ip("2130706433")) == "127.0.0.1"
    assert str(normalize_ip("0177.0.0.1")) == "127.0.0.1"
    assert str(normalize_ip("0x7f.0.0.1")) == "127.0.0.1"
    assert str(normalize_ip("127.1")) == "127.0.0.1"
    assert normalize_ip("hooks.example.com") is None
    for private in ("::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:a00:1::", "fec0::1", "ff02::1",
                    "240.0.0.1", "255.255.255.255", "198.18.0.1"):
        assert not is_public_address(private), private
    for public in ("8.8.8.8", "::ffff:8.8.8.8", "2606:4700::1111"):
        assert is_public_address(public), public


# -- incoming verification -----------------------------------------------------------------------


def _signed(secret: str, body: bytes, *, msg_id: str = "msg_1", ts: int | None = None
            ) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(msg_id, ts, body, secret)}


BODY = b'{"type":"a","timestamp":"2026-01-01T00:00:00Z","data":{"n":1}}'


@pytest.mark.parametrize(("case", "reason"), [
    ("tampered", "bad_signature"), ("wrong_secret", "bad_signature"), ("old", "expired"),
    ("future", "future"), ("missing", "missing_headers"), ("malformed_sig", "malformed"),
    ("malformed_ts", "malformed"), ("not_json", "malformed"), ("v2_only", "bad_signature"),
])
def test_incoming_verification_rejects_with_its_reason(case: str, reason: str) -> None:
    clock = _context.ManualClock(1_700_000_000)
    node = make(clock=clock)
    secret = generate_secret()
    now = int(clock())
    body = BODY
    headers = _signed(secret, body, ts=now)
    if case == "tampered":
        body = BODY.replace(b'"n":1', b'"n":2')
    elif case == "wrong_secret":
        headers = _signed(generate_secret(), body, ts=now)
    elif case == "old":
        headers = _signed(secret, body, ts=now - 301)
    elif case == "future":
        headers = _signed(secret, body, ts=now + 301)
    elif case == "missing":
        del headers["webhook-timestamp"]
    elif case == "malformed_sig":
        headers["webhook-signature"] = "garbage"
    elif case == "malformed_ts":
        headers["webhook-timestamp"] = "yesterday"
    elif case == "not_json":
        body = b"not json"
        headers = _signed(secret, body, ts=now)
    elif case == "v2_only":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    with pytest.raises(WebhookVerificationError) as info:
        node.webhooks.verify(body, headers, secret=secret)
    assert info.value.reason == reason and isinstance(info.value, PermissionError)
    assert secret not in str(info.value)
    # a rejected request never records its id: the genuine one is still accepted
    assert node.webhooks.verify(BODY, _signed(secret, BODY, ts=now), secret=secret)["data"] == {"n": 1}


def test_a_valid_request_is_accepted_exactly_once_within_the_replay_window() -> None:
    clock = _context.ManualClock(1_700_000_000)
    node = make(clock=clock, replay_window=600)
    secret = generate_secret()
    headers = _signed(secret, BODY, ts=int(clock()))
    assert node.webhooks.verify(BODY, headers, secret=secret)["data"] == {"n": 1}
    with pytest.raises(WebhookVerificationError) as info:
        node.webhooks.verify(BODY, headers, secret=secret)
    assert info.value.reason == "replayed"
    # timestamps 200 s apart both verify; the same id after the window is fresh again
    clock.advance(601)
    fresh = _signed(secret, BODY, ts=int(clock()))
    assert node.webhooks.verify(BODY, fresh, secret=secret)
    snap = node.metrics.snapshot()["counters"]
    assert any("webhook_verifications_total" in k and "replayed" in k for k in snap), snap


def test_headers_are_case_insensitive_and_any_listed_signature_may_match() -> None:
    node = make()
    secret = generate_secret()
    headers = _signed(secret, BODY)
    headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]
    upper = {k.title(): v for k, v in headers.items()}
    assert node.webhooks.verify(BODY.decode(), upper, secret=secret)["type"] == "a"


def test_verify_without_a_secret_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    node = make()
    with pytest.raises(ConfigurationError, match="ONEX_WEBHOOK_SECRET"):
        node.webhooks.verify(BODY, _signed(generate_secret(), BODY))
    secret = generate_secret()
    monkeypatch.setenv("ONEX_WEBHOOK_SECRET", secret)
    node = make()
    assert node.webhooks.verify(BODY, _signed(secret, BODY))["data"] == {"n": 1}


async def test_the_database_replay_store_survives_a_new_node(closing: list[Any]) -> None:
    namespace = f"wh{uuid.uuid4().hex[:10]}"
    secret = generate_secret()
    headers = _signed(secret, BODY)

    def build() -> Any:
        node = WebhookNode(capability_config={"database": {"namespace": namespace},
                                              "webhook": {"replay_store": "database"}})
        closing.append(node)
        return node

    first = build()
    assert (await first.webhooks.averify(BODY, headers, secret=secret))["data"] == {"n": 1}
    with pytest.raises(ConfigurationError, match="averify"):
        first.webhooks.verify(BODY, headers, secret=secret)
    with pytest.raises(WebhookVerificationError) as info:
        await build().webhooks.averify(BODY, headers, secret=secret)
    assert info.value.reason == "replayed"


@pytest.mark.redis
async def test_the_redis_replay_store(redis_url: str, redis_prefix: str, closing: list[Any]) -> None:
    secret = generate_secret()
    headers = _signed(secret, BODY, msg_id=f"msg_{uuid.uuid4().hex}")

    def build() -> Any:
        node = WebhookNode(capability_config={"webhook": {
            "replay_store": "redis", "redis_url": redis_url, "namespace": redis_prefix}})
        closing.append(node)
        return node

    assert build().webhooks.verify(BODY, headers, secret=secret)["data"] == {"n": 1}
    with pytest.raises(WebhookVerificationError) as info:
        await build().webhooks.averify(BODY, headers, secret=secret)
    assert info.value.reason == "replayed"


# -- the ASGI receiver ---------------------------------------------------------------------------


async def _asgi(app: Any, body: bytes, headers: dict[str, str], *, path: str = "/",
                method: str = "POST") -> tuple[int, bytes]:
    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body[:10], "more_body": True},
              {"type": "http.request", "body": body[10:], "more_body": False}]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_asgi_receiver_answers_204_401_400_500() -> None:
    node = make()
    secret = generate_secret()
    got: list[Any] = []

    async def handler(payload: Any) -> None:
        if payload["data"].get("boom"):
            raise RuntimeError("handler failed")
        got.append(payload)

    app = node.webhooks.asgi_receiver(handler, path="/in", secret=secret)
    assert await _asgi(app, BODY, _signed(secret, BODY), path="/in") == (204, b"")
    assert got[0]["data"] == {"n": 1}
    assert (await _asgi(app, BODY, _signed(secret, BODY), path="/in"))[0] == 401   # replayed
    assert (await _asgi(app, BODY, _signed(generate_secret(), BODY, msg_id="m2"),
                        path="/in"))[0] == 401
    assert (await _asgi(app, BODY, {}, path="/in"))[0] == 400
    boom = b'{"type":"a","data":{"boom":true}}'
    assert (await _asgi(app, boom, _signed(secret, boom, msg_id="m3"), path="/in"))[0] == 500
    assert (await _asgi(app, BODY, _signed(secret, BODY, msg_id="m4"), path="/other"))[0] == 404
    assert (await _asgi(app, BODY, {}, path="/in", method="GET"))[0] == 405
    sync_app = node.webhooks.asgi_receiver(got.append, secret=secret)
    assert (await _asgi(sync_app, BODY, _signed(secret, BODY, msg_id="m5")))[0] == 204


async def test_asgi_receiver_refuses_an_oversize_body() -> None:
    node = make(max_payload_bytes=16)
    secret = generate_secret()
    app = node.webhooks.asgi_receiver(lambda p: None, secret=secret)
    assert (await _asgi(app, BODY, _signed(secret, BODY)))[0] == 413


async def test_asgi_receiver_sets_credentials_that_the_authentication_guard_verifies(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from onex_compose import default_registry

    if "authentication" not in default_registry:
        pytest.skip("the authentication capability is not registered on this branch: the "
                    "receiver's credentials wiring is exercised once it lands")
    monkeypatch.setenv("ONEX_JWT_SECRET", "s" * 32)

    class Orders(NodeEffect):
        async def process(self, event: Any) -> Any:
            return event["data"], self.current_principal().subject  # type: ignore[attr-defined]

    node: Any = compose(Orders, ["webhook", "authentication"])(capability_config={
        "database": {"namespace": f"wh{uuid.uuid4().hex[:8]}"},
        "authentication": {"jwt_algorithms": ["HS256"]}})
    secret = generate_secret()
    seen: list[Any] = []

    async def handler(payload: Any) -> None:
        seen.append(await node.process(payload))

    app = node.webhooks.asgi_receiver(handler, secret=secret)
    token = node.authenticator.issue_token("partner-42")
    signed = _signed(secret, BODY, msg_id="m_auth")
    assert (await _asgi(app, BODY, {**signed, "authorization": f"Bearer {token}"}))[0] == 204
    assert seen == [({"n": 1}, "partner-42")]
    # without credentials the guard refuses process(): the handler fails, the sender retries
    unsigned = _signed(secret, BODY, msg_id="m_none")
    assert (await _asgi(app, BODY, unsigned))[0] == 500
    forged = {**_signed(secret, BODY, msg_id="m_bad"), "authorization": "Bearer not.a.jwt"}
    assert (await _asgi(app, BODY, forged))[0] == 500
    assert len(seen) == 1


# -- tracing -------------------------------------------------------------------------------------


async def test_traceparent_goes_into_the_request_under_a_client_span(closing: list[Any]) -> None:
    rec = Recorder()
    Traced = compose(NodeEffect, ["webhook", "tracing"])
    node = make(Traced, autostart=False, extra={"tracing": {    # "webhook" is instrumented by
        "exporter": "memory", "processor": "simple"}})           # default
    assert "webhook" in node.tracer.config.instrument
    closing.append(node)
    node.webhooks.transport = rec.transport()
    await node.webhooks.subscribe("https://hooks.example.com/in", ["*"])
    with node.tracer.span("checkout") as parent:
        await node.webhooks.publish("order.created", 1)
        trace_id = f"{parent.get_span_context().trace_id:032x}"
    await node.webhooks.step()
    tp = rec.requests[0].headers["traceparent"]
    assert tp.split("-")[1] == trace_id
    spans = {s.name: s for s in node.tracer.exporter.get_finished_spans()}
    client = spans["webhook.deliver"]
    assert client.kind.name == "CLIENT"
    assert client.parent.span_id == spans["checkout"].context.span_id
    assert tp.split("-")[2] == f"{client.context.span_id:016x}"


async def test_without_webhook_instrumented_the_publishers_traceparent_travels(
        closing: list[Any]) -> None:
    rec = Recorder()
    Traced = compose(NodeEffect, ["webhook", "tracing"])
    node = make(Traced, autostart=False, extra={"tracing": {
        "exporter": "memory", "processor": "simple", "instrument": ["database"]}})
    closing.append(node)
    node.webhooks.transport = rec.transport()
    await node.webhooks.subscribe("https://hooks.example.com/in", ["*"])
    with node.tracer.span("checkout") as parent:
        await node.webhooks.publish("order.created", 1)
        span_id = f"{parent.get_span_context().span_id:016x}"
    await node.webhooks.step()
    assert rec.requests[0].headers["traceparent"].split("-")[2] == span_id
    assert "webhook.deliver" not in {s.name for s in node.tracer.exporter.get_finished_spans()}


# -- health, config, errors ----------------------------------------------------------------------


async def test_health_reports_the_backlog_and_degrades_on_an_old_due_delivery(
        closing: list[Any]) -> None:
    clock = _context.ManualClock(1_700_000_000)
    Checked = compose(NodeEffect, ["webhook", "health_check"])
    node = make(Checked, clock=clock, autostart=False, health_max_age=60)
    closing.append(node)
    await node.webhooks.subscribe("https://hooks.example.com/in", ["*"])
    await node.webhooks.publish("a", 1)
    report = await node.webhooks.health()
    assert (report["status"], report["pending"]) == ("healthy", 1)
    clock.advance(61)
    report = await node.webhooks.health()
    assert report["status"] == "degraded" and "61 s" in report["reason"]
    assert node.metrics.snapshot()["gauges"]["webhook_pending_deliveries"] == 1


def test_config_validation_and_defaults() -> None:
    cfg = WebhookConfig()
    assert (cfg.timeout, cfg.connect_timeout, cfg.jitter, cfg.workers) == (10.0, 5.0, 0.2, 4)
    assert (cfg.allow_http, cfg.allow_private_networks, cfg.replay_store) == (False, False, "memory")
    for bad in ({"allowed_hosts": ["a*.b"]}, {"allowed_ports": [0]}, {"retry_schedule": [-1]},
                {"replay_store": "disk"}, {"unknown": 1}):
        with pytest.raises(Exception):
            WebhookConfig(**bad)


def test_missing_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "httpx" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r"onex-compose\[http\]"):
        WebhookNode().webhooks  # noqa: B018


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", 0) == 120
    when = email.utils.formatdate(1_000_100, usegmt=True)
    assert parse_retry_after(when, 1_000_000) == 100
    assert parse_retry_after(email.utils.formatdate(1, usegmt=True), 1_000) == 0
    assert parse_retry_after("-5", 0) is None and parse_retry_after(None, 0) is None


async def test_the_worker_survives_repeated_event_loops(hook: Hook) -> None:
    node = make()
    await node.webhooks.subscribe(hook.url, ["*"])
    await node.webhooks.publish("a", 1)
    assert await node.webhooks.drain(timeout=30)
    await node.webhooks.aclose()

    async def again() -> bool:
        await node.webhooks.publish("a", 2)
        ok = await node.webhooks.drain(timeout=30)
        await node.webhooks.aclose()
        return ok

    done: list[bool] = []
    thread = threading.Thread(target=lambda: done.append(asyncio.run(again())))
    thread.start()
    thread.join(60)
    assert done == [True] and len(hook.requests) == 2


def test_secrets_never_appear_in_reprs() -> None:
    secret = generate_secret()
    assert secret not in repr(Signer([secret])) and secret not in repr(Verifier([secret]))
    key = base64.b64decode(secret[6:])
    assert key.hex() not in repr(Signer([secret]))


async def test_patterns_are_case_sensitive_globs_without_character_classes(closing: list[Any]
                                                                          ) -> None:
    node = make(autostart=False)
    closing.append(node)
    await node.webhooks.subscribe("https://hooks.example.com/a", ["order.?aid", "user_%"])
    assert len(await node.webhooks.publish("order.paid", 1)) == 1
    assert await node.webhooks.publish("order.PAID", 1) == []     # case-sensitive
    assert await node.webhooks.publish("Order.paid", 1) == []
    assert await node.webhooks.publish("user_x", 1) == []         # % and _ are literal
    assert len(await node.webhooks.publish("user_%", 1)) == 1
    with pytest.raises(ValueError, match="'\\*'"):
        await node.webhooks.subscribe("https://hooks.example.com/a", ["order.[ab]"])
    sub = (await node.webhooks.subscriptions())[0]
    await node.webhooks.update(sub.id, events=["user.*"])
    assert await node.webhooks.publish("order.paid", 1) == []
    assert len(await node.webhooks.publish("user.created", 1)) == 1


@pytest.mark.slow
async def test_two_worker_processes_on_one_sqlite_file_never_overlap_on_one_delivery(
        tmp_path: Any, closing: list[Any]) -> None:
    """The claim is one ``UPDATE … RETURNING`` statement, atomic under SQLite's write lock: two
    processes draining one file outbox attempt every delivery exactly once."""
    import subprocess
    import sys

    from test_webhook_postgres import WORKER, CountingServer

    server = CountingServer(delay=0.01)
    db = {"url": f"sqlite:///{tmp_path / 'outbox.db'}", "namespace": "t"}
    node = WebhookNode(capability_config={"database": db, "webhook": {
        "allow_http": True, "allow_private_networks": True}})
    node.webhooks.autostart = False
    closing.append(node)
    try:
        await node.webhooks.subscribe(server.url, ["*"])
        for i in range(60):
            await node.webhooks.publish("tick", {"i": i})
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(db), "90"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
        outs = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err.decode()[-2000:]
        assert sum(int(out.decode().split()[-1]) for out, _ in outs) == 60
        assert server.concurrent == []
        assert len(server.seen) == 60 and set(server.seen.values()) == {1}
    finally:
        server.close()


async def test_node_aclose_leaves_no_worker_task_behind(hook: Hook) -> None:
    node = make()
    await node.webhooks.subscribe(hook.url, ["*"])
    await node.webhooks.publish("a", 1)
    assert any(t.get_name() == "onex-webhook-worker" for t in asyncio.all_tasks())
    await node.aclose()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "onex-webhook-worker"]


async def test_start_starts_the_worker_which_delivers_without_drain(hook: Hook) -> None:
    node = make()
    await node.webhooks.subscribe(hook.url, ["*"])
    await node.start()
    try:
        await node.webhooks.publish("a", 1)
        deadline = time.monotonic() + 30
        while not hook.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert len(hook.requests) == 1
    finally:
        await node.aclose()


async def test_aclose_mid_batch_releases_the_claimed_deliveries(hook: Hook) -> None:
    node = make(autostart=False, workers=1)
    hook.script = [(200, {}, 1.0)]                     # the first attempt hangs a while
    await node.webhooks.subscribe(hook.url, ["*"])
    for i in range(3):
        await node.webhooks.publish("a", i)
    node.webhooks.ensure_worker()
    deadline = time.monotonic() + 30
    while not hook.requests and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await node.webhooks.aclose()                       # cancels the batch mid-attempt
    rows = await node.webhooks.deliveries()
    assert {d.status for d in rows} == {"pending"}
    assert sorted(d.attempts for d in rows) == [0, 0, 1]   # never-started ones not counted
    assert await node.webhooks.step() == 3             # released now, not after the lease
    await node.webhooks.aclose()
