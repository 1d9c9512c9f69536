"""Webhooks: verification and signing against ``standardwebhooks``, and end-to-end delivery.

In one process, on a composed node (metrics counting every verification):

==============================================  ==================================================
ours                                            peer
==============================================  ==================================================
``node.webhooks.verify(body, headers)``         ``standardwebhooks.Webhook(secret).verify``
(timestamp, signature, JSON, replay window)     (timestamp, signature, JSON; no replay check)
``Signer([secret]).headers(id, ts, body)``      ``Webhook(secret).sign(id, datetime, body)``
``publish`` N events → delivered (outbox in     a hand-written loop: ``Webhook.sign`` +
the embedded SQLite database, lease, sign,      ``httpx.AsyncClient.post``, the same concurrency
SSRF vetting, POST, status update)              (``workers``)
==============================================  ==================================================

Targets (issue 13): ``verify`` ≤ 1.0x ``Webhook.verify`` (≤ 5 µs); signing ≤ 1.0x
``Webhook.sign``; end-to-end ≥ 0.7x the hand-written loop's throughput (the outbox write is the
price of durability, reported). The receiving server runs in a subprocess (a minimal asyncio
HTTP/1.1 server answering 204 with keep-alive) on 127.0.0.1, so it does not share this
process's GIL. The two CPU cases are measured interleaved on this thread's CPU clock; the
end-to-end case is wall clock, alternated, the median of the repeats.

Where the end-to-end time goes (cProfile of ``ours_loop``, 2026-12-05): the delivery path
already costs two statements per batch of up to ``8 * workers`` deliveries (one claiming
``UPDATE … RETURNING`` that also reads the subscription, one ``UPDATE … IN`` marking the 2xx
ones), one pooled ``httpx.AsyncClient`` per loop, and precomputed HMAC state (cached per
subscription's stored secrets). What remains is the per-event ``INSERT … SELECT`` of
``publish`` (0.56-0.88 ms here, the thread hand-off of aiosqlite and SQLAlchemy's execution
path), socket syscalls and the event loop, shared by both sides. On this loaded two-core
machine the end-to-end ratio varied 0.37-0.73x between runs of the same command and the
drain-only ratio 0.57-1.20x: the 0.7x target is not reliably met; the outbox write is the gap.

Run: ``python benchmarks/bench_webhook.py`` (``--smoke`` for a quick check that it runs).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import httpx  # noqa: E402
import standardwebhooks  # noqa: E402
from _harness import Table, parse_args, time_paired  # noqa: E402

from onex_compose import NodeEffect, compose  # noqa: E402
from onex_compose.capabilities.webhook import Signer, generate_secret  # noqa: E402

SERVER = r"""
import asyncio, sys

class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""
    def data_received(self, data):
        self.buf += data
        while True:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buf = rest[length:]
            self.t.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")

async def main():
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

BODY = b'{"type":"order.created","timestamp":"2026-01-01T00:00:00Z","data":{"id":1,"total":"9.99"}}'


def cpu_cases(table: Table, number: int, repeats: int) -> None:
    secret = generate_secret()
    os.environ["ONEX_WEBHOOK_SECRET"] = secret
    node = compose(NodeEffect, ["webhook"])(capability_config={
        "database": {"namespace": "bench_webhook"}})
    hooks = node.webhooks
    peer = standardwebhooks.Webhook(secret)
    signer = Signer([secret])
    now = int(time.time())
    total = number * repeats * 2 + 10
    requests = [(BODY, signer.headers(f"msg_{i}", now, BODY)) for i in range(total)]
    it_peer = iter(requests)
    it_ours = iter(requests)

    def peer_verify() -> object:
        body, headers = next(it_peer)
        return peer.verify(body, headers)

    def ours_verify() -> object:
        body, headers = next(it_ours)
        return hooks.verify(body, headers)

    t_ours, t_peer, ratio = time_paired(ours_verify, peer_verify, number=number, repeats=repeats,
                                        clock=time.thread_time)
    table.add("standardwebhooks Webhook.verify", t_peer)
    # the "<= 5 µs" was set where Webhook.verify took 7.6 µs: scaled to this machine's
    # speed it is a ratio of 5 / 7.6 = 0.66
    table.add("ours node.webhooks.verify (+ replay window, metrics)", t_ours, baseline=t_peer,
              target="<= 1.0x (<= 5 µs at a 7.6 µs peer: <= 0.66x)",
              note=("meets target" if ratio <= 5 / 7.6 else "MISSES target")
              + f" ({t_ours * 1e6:.1f} µs here, peer {t_peer * 1e6:.1f} µs)")

    at = datetime.fromtimestamp(now, UTC)
    text = BODY.decode()
    t_ours, t_peer, ratio = time_paired(lambda: signer.headers("msg_1", now, BODY),
                                        lambda: peer.sign("msg_1", at, text),
                                        number=number, repeats=repeats, clock=time.thread_time)
    table.add("standardwebhooks Webhook.sign", t_peer)
    table.add("ours Signer.headers (id, timestamp, signature)", t_ours, baseline=t_peer,
              target="<= 1.0x", note="meets target" if ratio <= 1.0 else "MISSES target")


async def peer_loop(url: str, secret: str, n: int, workers: int) -> float:
    wh = standardwebhooks.Webhook(secret)
    queue = list(range(n))
    async with httpx.AsyncClient(timeout=10.0) as client:
        async def worker() -> None:
            while queue:
                i = queue.pop()
                body = BODY
                ts = datetime.now(UTC)
                msg_id = f"msg_{i}"
                headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(ts.timestamp())),
                           "webhook-signature": wh.sign(msg_id, ts, body.decode()),
                           "content-type": "application/json"}
                response = await client.post(url, content=body, headers=headers)
                assert response.status_code == 204

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return (time.perf_counter() - t0) / n


async def ours_split(node: object, n: int) -> tuple[float, float]:
    """Per event: the outbox writes alone (worker held), then the delivery of those rows."""
    hooks = node.webhooks  # type: ignore[attr-defined]
    await hooks.aclose()
    hooks.autostart = False
    t0 = time.perf_counter()
    for i in range(n):
        await hooks.publish("order.created", {"id": i, "total": "9.99"})
    t1 = time.perf_counter()
    ok = await hooks.drain(timeout=120)
    t2 = time.perf_counter()
    hooks.autostart = True
    assert ok, "deliveries did not drain"
    return (t1 - t0) / n, (t2 - t1) / n


async def ours_loop(node: object, n: int, publishers: int = 4) -> float:
    """``publishers`` tasks publish ``n`` events (as the peer's workers post them), then the
    outbox drains; the worker delivers meanwhile."""
    hooks = node.webhooks  # type: ignore[attr-defined]
    queue = list(range(n))

    async def publisher() -> None:
        while queue:
            i = queue.pop()
            await hooks.publish("order.created", {"id": i, "total": "9.99"})

    t0 = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(publishers)))
    ok = await hooks.drain(timeout=120)
    took = (time.perf_counter() - t0) / n
    assert ok, "deliveries did not drain"
    return took


def end_to_end(table: Table, n: int, repeats: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}/hook"
        workers = 4

        async def run() -> tuple[list[float], list[float], list[tuple[float, float]]]:
            node = compose(NodeEffect, ["webhook"])(capability_config={
                "database": {"namespace": "bench_webhook_e2e"},
                "webhook": {"allow_http": True, "allow_private_networks": True,
                            "workers": workers}})
            sub = await node.webhooks.subscribe(url, ["order.*"])
            assert sub.secret is not None
            await ours_loop(node, min(n, 50))         # warm up both sides
            await peer_loop(url, sub.secret, min(n, 50), workers)
            ours, peer, split = [], [], []
            for _ in range(repeats):
                peer.append(await peer_loop(url, sub.secret, n, workers))
                ours.append(await ours_loop(node, n))
                split.append(await ours_split(node, n))
            await node.webhooks.aclose()
            return ours, peer, split

        ours, peer, split = asyncio.run(run())
    finally:
        proc.kill()
        proc.wait()
    t_ours, t_peer = statistics.median(ours), statistics.median(peer)
    throughput = t_peer / t_ours
    table.add(f"hand-written Webhook.sign + httpx post, {workers} concurrent (per event)", t_peer)
    table.add("ours publish -> delivered (outbox, SQLite memory; per event)", t_ours,
              baseline=t_peer, target=">= 0.7x throughput",
              note=f"throughput {throughput:.2f}x of the loop: "
                   + ("meets target" if throughput >= 0.7 else "MISSES target"))
    t_write = statistics.median(w for w, _ in split)
    t_deliver = statistics.median(d for _, d in split)
    table.add("  of which: the outbox write alone (publish, worker held; per event)", t_write,
              baseline=t_peer, note="the price of durability: one INSERT…SELECT statement")
    table.add("  of which: delivering a filled outbox (drain; per event)", t_deliver,
              baseline=t_peer, note=f"throughput {t_peer / t_deliver:.2f}x of the loop")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    number = 200 if args.smoke else 5_000
    repeats = 3 if args.smoke else 2 * args.repeats
    table = Table("webhook", "Webhooks: verify/sign vs standardwebhooks, end-to-end delivery")
    cpu_cases(table, number, repeats)
    end_to_end(table, 50 if args.smoke else 500, 1 if args.smoke else max(3, args.repeats // 2))
    table.finish(args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
