"""The operations endpoint: /metrics, /livez, /readyz, /startupz over real HTTP (issue 11).

Every HTTP request here goes through a real socket with a real client (``urllib.request`` in a
thread), to a server that listens on 127.0.0.1 at a free port: uvicorn (the ``[ops]`` extra)
and the stdlib asyncio server both, through the ``server`` fixture.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from onex_compose import (
    ConfigurationError,
    NodeCompute,
    NodeComputeService,
    compose,
    default_registry,
    has_capability,
    ops_app,
)
from onex_compose._ops import OpsApp, OpsServer, OpsServerError, uvicorn_available

SERVERS = ["stdlib", pytest.param("uvicorn", marks=pytest.mark.skipif(
    not uvicorn_available(), reason="uvicorn is not installed (pip install 'onex-compose[ops]')"))]
BOUND = 30.0  # generous bound for anything we wait for


@pytest.fixture(params=SERVERS)
def server(request: Any) -> str:
    return str(request.param)


def fetch(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
          data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One real HTTP request; returns (status, headers lower-cased, body) for any status."""
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=BOUND) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, \
                response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


async def get(url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(fetch, url, **kwargs)


async def wait_for(predicate: Any, what: str) -> None:
    """Poll an async predicate until true, with a generous bound (never a fixed sleep)."""
    async with asyncio.timeout(BOUND):
        while not await predicate():
            await asyncio.sleep(0.02)


def parse(text: str) -> list[Any]:
    return list(text_string_to_metric_families(text))


def series(families: list[Any]) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    return [(s.name, tuple(sorted(s.labels.items()))) for f in families for s in f.samples]


Service = compose(NodeComputeService, ["metrics", "health_check"])


class Orders(Service):
    async def process(self, data: Any) -> Any:
        self.metrics.increment("orders", labels={"kind": "web"})
        gate = data.get("gate") if isinstance(data, dict) else None
        if gate is not None:
            await gate.wait()
        return data


def service_node(server: str, node_id: str = "orders-1", **config: Any) -> Orders:
    return Orders(node_id=node_id, capability_config={
        "node_service": {"ops_port": 0, "ops_server": server, "handle_signals": False,
                         **config},
        "health_check": {"interval": 0.05}})


async def serving(node: Any) -> asyncio.Task[None]:
    """Start ``node.serve()`` and wait until the node is started and the endpoint listens."""
    task = asyncio.create_task(node.serve())

    async def up() -> bool:
        if task.done():
            task.result()
        return node.service.ops_url is not None and node._onex_started

    await wait_for(up, "serve() to start")
    return task


# -- /metrics ---------------------------------------------------------------------------------


async def test_scrape_parses_and_carries_node_labels(server: str) -> None:
    node = service_node(server)
    task = await serving(node)
    try:
        await node.process({"n": 1})
        status, headers, body = await get(node.service.ops_url + "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in parse(body.decode())}
        info = families["onex_node_info"].samples
        assert [(s.labels, s.value) for s in info] == [({
            "node": "orders-1", "node_type": "COMPUTE",
            "capabilities": "health_check,metrics,node_service"}, 1.0)]
        orders = families["orders"]
        assert orders.type == "counter"
        assert [(s.name, s.labels, s.value) for s in orders.samples] == [
            ("orders_total", {"node": "orders-1", "kind": "web"}, 1.0)]
        assert any(s.labels == {"node": "orders-1", "outcome": "ok", "le": "+Inf"}
                   for s in families["process_duration"].samples)
        probes = {s.labels["probe"]: s.value for s in families["onex_node_probe"].samples}
        assert probes == {"livez": 1.0, "readyz": 1.0, "startupz": 1.0}
        for family in families.values():  # every series carries the node label
            assert all(s.labels.get("node") == "orders-1" for s in family.samples), family.name
    finally:
        await node.stop()
        await task


async def test_openmetrics_when_accept_asks_and_gzip(server: str) -> None:
    node = service_node(server)
    task = await serving(node)
    try:
        url = node.service.ops_url + "/metrics"
        status, headers, body = await get(url, headers={
            "Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"})
        assert status == 200
        assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        text = body.decode()
        assert text.endswith("# EOF\n")
        assert "onex_node_info" in {f.name for f in om_parse(text)}
        status, headers, body = await get(url, headers={"Accept-Encoding": "gzip"})
        assert headers.get("content-encoding") == "gzip"
        assert "onex_node_info" in gzip.decompress(body).decode()
        # ?name[]= restricts the scrape
        status, _, body = await get(url + "?name[]=onex_node_info")
        assert {f.name for f in parse(body.decode())} == {"onex_node_info"}
    finally:
        await node.stop()
        await task


async def test_two_nodes_one_scrape_no_duplicate_series(server: str) -> None:
    a, b = Orders(node_id="a"), Orders(node_id="b")
    plain = NodeCompute(node_id="plain")  # no metrics: only its info and probes
    for node in (a, b):
        await node.process({})
        node.metrics.gauge("queue", 3, labels={"node": "user-label"})  # clashes with ours
    b.metrics.increment("only_b")
    app = ops_app(a, b, plain)
    ops = OpsServer(app, port=0, server=server)  # type: ignore[arg-type]
    await ops.start()
    try:
        status, _, body = await get(f"{ops.url}/metrics")
        assert status == 200
        text = body.decode()
        families = parse(text)
        names = [f.name for f in families]
        assert len(names) == len(set(names))  # one family per name (one # TYPE line)
        assert Counter(line.split()[2] for line in text.splitlines()
                       if line.startswith("# TYPE")).most_common(1)[0][1] == 1
        all_series = series(families)
        assert len(all_series) == len(set(all_series)), "duplicate series"
        by_name = {f.name: f for f in families}
        assert {s.labels["node"] for s in by_name["orders"].samples} == {"a", "b"}
        assert {s.labels["node"] for s in by_name["onex_node_info"].samples} == {
            "a", "b", "plain"}
        assert {(s.labels["node"], s.labels["exported_node"])
                for s in by_name["queue"].samples} == {("a", "user-label"), ("b", "user-label")}
        assert {s.labels["node"] for s in by_name["only_b"].samples} == {"b"}
        plain_info = [s for s in by_name["onex_node_info"].samples if s.labels["node"] == "plain"]
        assert plain_info[0].labels["capabilities"] == ""
    finally:
        await ops.stop()


def test_conflicting_kinds_are_left_out_once(logs: list[str]) -> None:
    Metered = compose(NodeCompute, ["metrics"])
    a, b = Metered(node_id="a"), Metered(node_id="b")
    a.metrics.increment("jobs")
    b.metrics.gauge("jobs", 4)  # same name, another kind: cannot share one family
    b.metrics.gauge("jobs_total", 1)  # the name a's counter writes
    app = ops_app(a, b)
    families = parse(app.metrics_text().decode())
    assert [(f.name, f.type) for f in families if f.name.startswith("jobs")] == [
        ("jobs", "counter")]
    assert len(series(families)) == len(set(series(families)))
    app.metrics_text()
    warnings = [line for line in logs if "left out of the scrape" in line]
    assert len(warnings) == 2  # once per (node, family), not once per scrape
    assert "'jobs' of node 'b'" in warnings[0]


@pytest.fixture
def logs() -> Any:
    from onex_compose.capabilities._log import base_logger

    lines: list[str] = []
    base_logger.enable("onex_compose")
    sink = base_logger.add(lambda m: lines.append(str(m)), level="INFO")
    yield lines
    base_logger.remove(sink)
    base_logger.disable("onex_compose")


# -- probes -----------------------------------------------------------------------------------


async def test_readyz_before_start_while_check_fails_and_after(server: str) -> None:
    Checked = compose(NodeCompute, ["metrics", "health_check"])
    node = Checked(node_id="n", capability_config={"health_check": {"interval": 0.05}})
    ops = OpsServer(node.ops_app(), port=0, server=server)  # type: ignore[arg-type]
    await ops.start()
    base = ops.url
    try:
        status, headers, body = await get(f"{base}/readyz")
        assert status == 503
        assert headers["content-type"] == "application/json"
        report = json.loads(body)
        assert report["status"] == "fail" and report["failing"] == ["n: started"]
        assert report["nodes"]["n"]["failing"] == {"started": "start() has not completed"}
        assert (await get(f"{base}/startupz"))[0] == 503
        assert (await get(f"{base}/livez"))[0] == 200  # not started is still alive

        await node.start()
        assert (await get(f"{base}/readyz"))[0] == 200
        assert (await get(f"{base}/startupz"))[0] == 200

        state = {"ok": False}
        node.register_health_check(
            lambda: {"status": "healthy" if state["ok"] else "unhealthy",
                     "reason": "ok" if state["ok"] else "db down"}, name="db")

        async def names_db() -> bool:
            status, _, body = await get(f"{base}/readyz")
            return status == 503 and json.loads(body)["nodes"]["n"]["failing"].get(
                "check:db") == "db down"

        await wait_for(names_db, "/readyz to name the failing check")
        assert json.loads((await get(f"{base}/readyz"))[2])["failing"] == ["n: check:db"]
        assert (await get(f"{base}/livez"))[0] == 200  # a failing check is unready, not dead

        state["ok"] = True
        await node.health_check()
        status, _, body = await get(f"{base}/readyz")
        assert status == 200 and json.loads(body)["failing"] == []

        # a non-critical failure degrades: ready, and the body says so
        node.register_health_check(lambda: False, name="cache", critical=False)
        await node.health_check()
        status, _, body = await get(f"{base}/readyz")
        assert status == 200
        assert "check:cache" in json.loads(body)["nodes"]["n"]["degraded"]
        await node.aclose()
        status, _, body = await get(f"{base}/readyz")
        assert status == 503 and json.loads(body)["nodes"]["n"]["failing"]["started"] == (
            "the node is closed")
    finally:
        await node.aclose()
        await ops.stop()


async def test_livez_fails_when_the_health_loop_died() -> None:
    Checked = compose(NodeCompute, ["metrics", "health_check"])
    node = Checked(node_id="n", capability_config={"health_check": {"interval": 0.05}})
    app = node.ops_app()
    await node.start()
    try:
        node.health._loop_task.cancel()  # the background refresh dies (not through close)
        await asyncio.sleep(0)
        await wait_for(lambda: _async(not app.probe("livez")[0]), "livez to fail")
        ok, body = app.probe("livez")
        assert body["nodes"]["n"]["failing"].keys() == {"health_refresh"}
    finally:
        await node.aclose()


async def _async(value: bool) -> bool:
    return value


async def test_endpoint_answers_while_process_calls_run_and_during_drain(server: str) -> None:
    node = service_node(server, shutdown_timeout=BOUND)
    task = await serving(node)
    gate = asyncio.Event()
    calls = [asyncio.create_task(node.process({"gate": gate})) for _ in range(5)]
    url = node.service.ops_url
    try:
        async def five_in_flight() -> bool:
            status, _, body = await get(url + "/metrics")
            found = {f.name: f for f in parse(body.decode())}["onex_node_in_flight"].samples
            return status == 200 and found[0].value == 5.0

        await wait_for(five_in_flight, "the scrape to show 5 calls in flight")
        assert (await get(url + "/readyz"))[0] == 200
        stopping = asyncio.create_task(node.stop())

        async def draining() -> bool:
            status, _, body = await get(url + "/readyz")
            return status == 503 and "draining" in json.loads(body)["nodes"]["orders-1"][
                "failing"]

        await wait_for(draining, "/readyz to report the drain")
        assert (await get(url + "/livez"))[0] == 200
        gate.set()
        assert await asyncio.gather(*calls) == [{"gate": gate}] * 5
        await stopping
        await asyncio.wait_for(task, BOUND)
    finally:
        gate.set()
        await node.stop()
    assert node.service.ops_url is None
    host, port = url.removeprefix("http://").split(":")
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=5):
        pass


async def test_stop_within_shutdown_timeout_with_a_stuck_client(server: str) -> None:
    node = service_node(server, shutdown_timeout=1.0)
    task = await serving(node)
    host, port = node.service.ops_url.removeprefix("http://").split(":")
    stuck = socket.create_connection((host, int(port)))
    stuck.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes its request
    try:
        await node.stop()
        await asyncio.wait_for(task, BOUND)  # returns: the stuck client does not hold it
        assert node.service.ops_url is None
    finally:
        stuck.close()


# -- HTTP surface ---------------------------------------------------------------------------------


async def test_404_405_head_and_mounting(server: str) -> None:
    node = NodeCompute(node_id="n")
    ops = OpsServer(node.ops_app(), port=0, server=server)  # type: ignore[arg-type]
    await ops.start()
    try:
        status, _, body = await get(f"{ops.url}/nope")
        assert status == 404 and json.loads(body)["endpoints"] == [
            "/metrics", "/livez", "/readyz", "/startupz"]
        status, headers, _ = await get(f"{ops.url}/metrics", method="POST", data=b"x")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        status, headers, body = await get(f"{ops.url}/livez", method="HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        assert (await get(f"{ops.url}/livez/"))[0] == 200
        assert (await get(f"{ops.url}/debug/profile"))[0] == 404  # profiling not composed
    finally:
        await ops.stop()


async def test_asgi_app_mounted_under_a_prefix() -> None:
    app = NodeCompute(node_id="n").ops_app()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/ops/livez", "root_path": "/ops",
             "query_string": b"", "headers": []}
    await app(scope, receive, send)
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"])["probe"] == "livez"
    # lifespan messages are answered (servers that send them get no error)
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent.clear()
    await app({"type": "lifespan"}, lambda: _async_value(next(messages)), send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                         "lifespan.shutdown.complete"]


async def _async_value(value: Any) -> Any:
    return value


def test_bad_input_is_refused_with_a_reason() -> None:
    Metered = compose(NodeCompute, ["metrics"])
    with pytest.raises(ValueError, match="two nodes share node_id 'x'"):
        ops_app(Metered(node_id="x"), Metered(node_id="x"))
    with pytest.raises(TypeError, match="takes node instances"):
        ops_app(object())
    with pytest.raises(ValueError, match="at least one node"):
        ops_app()
    with pytest.raises(ConfigurationError, match="unknown; use one of auto, uvicorn, stdlib"):
        OpsServer(ops_app(NodeCompute()), server="nginx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ops_port"):
        NodeComputeService(capability_config={"node_service": {"ops_port": 70000}})
    with pytest.raises(ValueError, match="ops_server"):
        NodeComputeService(capability_config={"node_service": {"ops_server": "nginx"}})
    with pytest.raises(ValueError, match="unknown probe"):
        ops_app(NodeCompute()).probe("healthz")
    assert repr(ops_app(NodeCompute(node_id="r"))) == (
        "<OpsApp nodes=['r'] endpoints=/metrics /livez /readyz /startupz>")


async def test_port_in_use_is_an_ops_server_error(server: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = service_node(server, ops_port=port)
        with pytest.raises(OpsServerError, match=rf"cannot listen on 127.0.0.1:{port}"):
            await node.serve()
        assert not node._onex_started  # the node never started


async def test_free_port_is_logged(logs: list[str]) -> None:
    node = service_node("stdlib")
    task = await serving(node)
    try:
        assert any(f"listening on {node.service.ops_url}" in line for line in logs)
        assert f"ops={node.service.ops_url}" in repr(node.service)
    finally:
        await node.stop()
        await task


async def test_profile_endpoint_when_profiling_is_composed() -> None:
    if "profiling" not in {s.name for s in default_registry}:
        pytest.skip("the profiling capability is not registered in this build yet (issue 11, "
                    "built in parallel); /debug/profile is served once it is")
    Profiled = compose(NodeCompute, ["metrics", "profiling"])

    class Node(Profiled):  # type: ignore[misc, valid-type]
        async def process(self, data: Any) -> Any:
            return sum(range(1000))

    node = Node(node_id="p", capability_config={"profiling": {"sample_rate": 1.0}})
    assert has_capability(node, "profiling")
    await node.process(None)
    ops = OpsServer(node.ops_app(), port=0, server="stdlib")
    await ops.start()
    try:
        status, headers, body = await get(f"{ops.url}/debug/profile")
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body) == json.loads(node.profiler.report().to_json())
    finally:
        await ops.stop()


# -- onex serve -----------------------------------------------------------------------------------


def _serve_subprocess(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "onex_compose._cli", "serve", *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "onex serve: <id> started (pid N); operations endpoint at URL"
    if "operations endpoint at " not in line:
        proc.kill()
        raise AssertionError(f"unexpected output {line!r}; stderr: {proc.stderr.read()}")
    return proc, line.rsplit(" ", 1)[1].strip()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["module", "contract"])
def test_onex_serve_subprocess_probe_and_terminate(tmp_path: Path, kind: str) -> None:
    (tmp_path / "opsnodes.py").write_text(textwrap.dedent("""
        from onex_compose import NodeCompute, compose

        class Orders(compose(NodeCompute, ["metrics", "health_check"])):
            async def process(self, data):
                return data
    """))
    (tmp_path / "node.yaml").write_text(textwrap.dedent("""
        node_type: COMPUTE
        capabilities: [metrics, health_check]
    """))
    target = "opsnodes:Orders" if kind == "module" else str(tmp_path / "node.yaml")
    proc, url = _serve_subprocess([target, "--ops-port", "0", "--node-id", "svc"], tmp_path)
    try:
        status, _, body = fetch(url + "/readyz")
        assert status == 200 and json.loads(body)["nodes"].keys() == {"svc"}
        assert fetch(url + "/livez")[0] == 200 and fetch(url + "/startupz")[0] == 200
        families = {f.name: f for f in parse(fetch(url + "/metrics")[2].decode())}
        caps = families["onex_node_info"].samples[0].labels["capabilities"]
        assert caps == "health_check,metrics,node_service"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=BOUND)
        assert proc.returncode == 0, err
        assert "svc stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_onex_serve_bad_target_is_a_usage_error(capsys: Any, tmp_path: Path) -> None:
    from onex_compose._cli import main

    assert main(["serve", "no_such_module_xyz:Node"]) == 2
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing.yaml")]) == 2
    assert "neither a contract file nor module:Class" in capsys.readouterr().err
    assert main(["serve", "json:dumps"]) == 2
    assert "not a node class or node" in capsys.readouterr().err


def test_ops_app_is_lazy_and_the_app_type_is_public() -> None:
    code = ("import sys, onex_compose; assert 'onex_compose._ops' not in sys.modules; "
            "from onex_compose import ops_app; assert 'uvicorn' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=BOUND)
    assert isinstance(NodeCompute().ops_app(), OpsApp)


def test_without_uvicorn_the_stdlib_server_is_used(monkeypatch: Any) -> None:
    import onex_compose._ops as ops_module

    monkeypatch.setattr(ops_module, "uvicorn_available", lambda: False)
    app = ops_app(NodeCompute())
    assert OpsServer(app).kind == "stdlib"
    with pytest.raises(ConfigurationError, match=r"pip install 'onex-compose\[ops\]'"):
        OpsServer(app, server="uvicorn")


def test_without_prometheus_client_metrics_nodes_need_the_extra(monkeypatch: Any) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "prometheus_client" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r"pip install 'onex-compose\[ops\]'"):
        compose(NodeCompute, ["metrics"])().ops_app()
    assert NodeCompute().ops_app().probe("livez")[0]  # probes alone need nothing


def test_onex_serve_bad_config_and_bad_class(capsys: Any, tmp_path: Path, monkeypatch: Any) -> None:
    from onex_compose._cli import main

    (tmp_path / "oddnode.py").write_text(textwrap.dedent("""
        from onex_compose import NodeCompute

        class Odd(NodeCompute):
            def __init__(self, only):
                super().__init__()
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # onex serve adds the current folder
    assert main(["serve", "oddnode:Odd"]) == 2
    assert "cannot create oddnode:Odd" in capsys.readouterr().err
    assert main(["serve", "onex_compose:NodeCompute", "--ops-port", "-5"]) == 1
    assert "ops_port" in capsys.readouterr().err
