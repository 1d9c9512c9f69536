"""A second process for the multi-process service_registry tests on Redis.

Run as ``python tests/helpers_registry_procs.py URL NAMESPACE NODE_ID TTL INTERVAL``. It builds
a node with ``service_registry`` on Redis (server clock), watches the namespace's changes,
starts the node (registers; the heartbeat task heartbeats and sweeps every INTERVAL) and prints
``{"ready": true, "instance_id": ...}``. Then one ``{"change": kind, "instance_id": ...}`` line
per change it receives. Commands, one per line on stdin:

* ``discover`` -> ``{"entries": [[instance_id, status], ...]}`` (online ones);
* ``sweep`` -> ``{"swept": [[kind, instance_id], ...]}`` (what this process's sweep changed);
* ``count KIND ID`` -> ``{"count": n}`` (changes of that kind for that id received so far,
  after delivering everything queued);
* ``quit`` -> closes the node and prints ``{"tasks": n}`` (tasks left behind, must be 0).
"""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from helpers_procs import Proc, emit

HELPER = Path(__file__)


class RegistryProc(Proc):
    """A registry helper process (JSON lines; see the module docstring)."""

    def __init__(self, *args: str) -> None:  # noqa: D107 - same protocol as Proc
        self.p = subprocess.Popen([sys.executable, str(HELPER), *args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()


async def serve(url: str, ns: str, node_id: str, ttl: float, interval: float) -> None:
    from onex_compose import NodeCompute, compose

    class Member(compose(NodeCompute, ["service_registry", "caching"])):  # type: ignore[misc]
        pass

    node = Member(node_id=node_id, capability_config={"service_registry": {
        "backend": "redis", "redis_url": url, "namespace": ns, "ttl": ttl,
        "heartbeat_interval": interval}})
    reg = node.service_registry
    seen: list[tuple[str, str]] = []

    def on_change(change: Any) -> None:
        seen.append((change.kind, change.entry.instance_id))
        emit({"change": change.kind, "instance_id": change.entry.instance_id})

    await reg.watch(on_change)
    await node.start()
    emit({"ready": True, "instance_id": reg.instance_id})
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        cmd, *args = line.split()
        if cmd == "discover":
            emit({"entries": [[e.instance_id, e.status] for e in await reg.discover()]})
        elif cmd == "sweep":
            emit({"swept": [[c.kind, c.entry.instance_id] for c in await reg.sweep()]})
        elif cmd == "count":
            await reg.drain(5)
            emit({"count": seen.count((args[0], args[1]))})
    await node.aclose()
    await asyncio.sleep(0)
    emit({"tasks": len(asyncio.all_tasks()) - 1})


if __name__ == "__main__":
    sys.path.insert(0, str(HELPER.parent))
    _, url, ns, node_id, ttl, interval = sys.argv
    asyncio.run(serve(url, ns, node_id, float(ttl), float(interval)))
