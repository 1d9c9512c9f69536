"""A second process for the two-process Redis tests (caching invalidation, event delivery).

Run as ``python tests/helpers_procs.py MODE URL NAMESPACE [TOPIC...]``. It prints one JSON object
per line on stdout and reads commands, one per line, on stdin:

* ``cache URL NS``: a node with ``caching`` on the Redis backend. Commands:
  ``get KEY`` -> ``{"value": ..., "l1": [keys]}``; ``set KEY JSON`` -> ``{"ok": true}``;
  ``l1`` -> ``{"l1": [keys]}`` (its L1, read without touching Redis);
  ``wait-gone KEY SECONDS`` -> ``{"gone": bool}`` (polls its L1 until KEY is dropped);
  ``wait-inval N SECONDS`` -> ``{"invalidations": n}`` (waits until N messages arrived);
  ``wait-empty SECONDS`` -> ``{"empty": bool}``; ``quit``.
* ``events URL NS TOPIC...``: a node with ``event_bus`` on Redis subscribed to each TOPIC. It
  prints ``{"ready": true}`` once every subscription is confirmed, then one
  ``{"event": envelope, "sub": TOPIC}`` line per delivered event; ``quit`` closes the node and
  prints ``{"tasks": n}`` (tasks left behind, which must be 0).
* ``traced-events URL NS TOPIC...``: the same node with ``tracing`` too (memory exporter,
  simple processor). Each delivered event prints ``{"event": envelope, "sub": TOPIC,
  "trace_id": ..., "span_id": ..., "correlation_id": ...}`` as seen inside the handler;
  ``spans`` -> ``{"spans": [{"name", "kind", "trace_id", "span_id", "parent_id"}...]}`` (the
  spans this process finished); ``quit`` as above.

The ``JsonCodec`` below is also used as a custom ``module:object`` serializer in the tests.
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

HELPER = Path(__file__)


class JsonCodec:
    """A custom serializer (``helpers_procs:JsonCodec``): JSON with a marker, to prove it ran."""

    @staticmethod
    def dumps(value: Any) -> bytes:
        return b"J" + json.dumps(value).encode()

    @staticmethod
    def loads(data: bytes) -> Any:
        assert data[:1] == b"J", data
        return json.loads(data[1:])


# -- used by the tests (the parent process) --------------------------------------------------


async def eventually(check: Any, timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.005)
    return bool(check())


async def no_tasks_left() -> bool:
    await asyncio.sleep(0)
    return asyncio.all_tasks() == {asyncio.current_task()}


class Proc:
    """A helper process speaking JSON lines (see helpers_procs.py)."""

    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen([sys.executable, str(HELPER), *args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line)

    def read(self, timeout: float = 10.0) -> Any:
        try:
            return json.loads(self.lines.get(timeout=timeout))
        except queue.Empty:
            err = self.p.stderr.read() if self.p.poll() is not None and self.p.stderr else ""
            raise AssertionError(f"helper process said nothing for {timeout}s; stderr: {err}")

    async def ask(self, line: str, timeout: float = 10.0) -> Any:
        self.send(line)
        return await asyncio.to_thread(self.read, timeout)

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                self.send("quit")
                self.p.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()
        for stream in (self.p.stdin, self.p.stdout, self.p.stderr):
            if stream is not None:
                stream.close()


# -- the helper process ----------------------------------------------------------------------


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def read_line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def cache_mode(url: str, namespace: str) -> None:
    from onex_compose import NodeCompute, compose

    node = compose(NodeCompute, ["caching"])(capability_config={"caching": {
        "backend": "redis", "redis_url": url, "namespace": namespace}})
    cache = node.cache
    emit({"ready": True})
    while True:
        line = (await read_line()).strip()
        if not line or line == "quit":
            break
        cmd, _, rest = line.partition(" ")
        if cmd == "get":
            value = await cache.get(rest)
            emit({"value": value, "l1": cache.stats()["keys"]})
        elif cmd == "set":
            key, _, raw = rest.partition(" ")
            await cache.set(key, json.loads(raw))
            emit({"ok": True})
        elif cmd == "l1":
            emit({"l1": list(cache._data)})
        elif cmd == "wait-gone":
            key, _, seconds = rest.partition(" ")
            deadline = asyncio.get_running_loop().time() + float(seconds)
            while key in cache._data and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.005)
            emit({"gone": key not in cache._data})
        elif cmd == "wait-inval":
            count, _, seconds = rest.partition(" ")
            deadline = asyncio.get_running_loop().time() + float(seconds)
            while (cache.health()["invalidations_received"] < int(count)
                   and asyncio.get_running_loop().time() < deadline):
                await asyncio.sleep(0.005)
            emit({"invalidations": cache.health()["invalidations_received"]})
        elif cmd == "wait-empty":
            deadline = asyncio.get_running_loop().time() + float(rest)
            while len(cache) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.005)
            emit({"empty": len(cache) == 0})
        else:
            emit({"error": f"unknown command {cmd!r}"})
    await node.aclose()


async def events_mode(url: str, namespace: str, topics: list[str]) -> None:
    from onex_compose import NodeCompute, compose

    node = compose(NodeCompute, ["event_bus"])(
        capability_config={"event_bus": {"backend": "redis", "redis_url": url,
                                         "namespace": namespace}},
        node_id="reader")

    def handler_for(topic: str) -> Any:
        def handler(event: Any) -> None:
            emit({"event": event.to_dict(), "sub": topic})
        return handler

    for topic in topics:
        await node.event_bus.subscribe(topic, handler_for(topic))
    emit({"ready": True})
    while True:
        line = (await read_line()).strip()
        if not line or line == "quit":
            break
    await node.aclose()
    emit({"tasks": len(asyncio.all_tasks()) - 1})


async def traced_events_mode(url: str, namespace: str, topics: list[str]) -> None:
    from onex_compose import NodeCompute, compose
    from onex_compose.capabilities import _context

    node = compose(NodeCompute, ["event_bus", "tracing"])(
        capability_config={"event_bus": {"backend": "redis", "redis_url": url,
                                         "namespace": namespace},
                           "tracing": {"exporter": "memory", "processor": "simple"}},
        node_id="traced-reader")
    tracer = node.tracer

    def handler_for(topic: str) -> Any:
        def handler(event: Any) -> None:
            emit({"event": event.to_dict(), "sub": topic, "trace_id": tracer.current_trace_id(),
                  "span_id": tracer.current_span_id(),
                  "correlation_id": _context.correlation_id.get()})
        return handler

    for topic in topics:
        await node.event_bus.subscribe(topic, handler_for(topic))
    emit({"ready": True})
    while True:
        line = (await read_line()).strip()
        if not line or line == "quit":
            break
        if line == "spans":
            emit({"spans": [
                {"name": s.name, "kind": s.kind.name, "trace_id": f"{s.context.trace_id:032x}",
                 "span_id": f"{s.context.span_id:016x}",
                 "parent_id": f"{s.parent.span_id:016x}" if s.parent else None}
                for s in tracer.exporter.get_finished_spans()]})
        else:
            emit({"error": f"unknown command {line!r}"})
    await node.aclose()
    emit({"tasks": len(asyncio.all_tasks()) - 1})


def main(argv: list[str]) -> int:
    mode, url, namespace, *rest = argv
    if mode == "cache":
        asyncio.run(cache_mode(url, namespace))
    elif mode == "events":
        asyncio.run(events_mode(url, namespace, rest))
    elif mode == "traced-events":
        asyncio.run(traced_events_mode(url, namespace, rest))
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
