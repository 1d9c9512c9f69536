"""The operations endpoint: ``/metrics`` for Prometheus, ``/livez`` ``/readyz`` ``/startupz`` for Kubernetes.

:func:`ops_app` (also ``node.ops_app()``) is a plain ASGI application, with no web framework
behind it, so it mounts in Starlette or FastAPI (``app.mount("/ops", node.ops_app())``) or runs
on any ASGI server. It serves:

=====================  ===========================================================================
``GET /metrics``       every node's metrics in one scrape, written by ``prometheus_client``'s own
                       exposition code: the Prometheus text format (0.0.4), or OpenMetrics when
                       the scraper's ``Accept`` header asks for it; gzip when ``Accept-Encoding``
                       allows it; ``?name[]=x`` restricts the scrape to the families named.
``GET /livez``         liveness: 200, or 503 when a node's health refresh stopped or is overdue
                       (its event loop is stuck)
``GET /readyz``        readiness: 200 once every node has started and no critical health check
                       fails; 503 before ``start()``, while a check fails or has not run yet,
                       and while a service drains on shutdown
``GET /startupz``      startup: 200 once ``start()`` has finished
``GET /debug/profile`` the last profiling report (JSON), when a node composes ``profiling``
=====================  ===========================================================================

Anything else is 404 (with the list of endpoints), another method than GET/HEAD 405. A probe's
body is JSON naming what fails::

    {"status": "fail", "probe": "readyz", "failing": ["Orders-1: started"],
     "nodes": {"Orders-1": {"status": "fail", "failing": {"started": "start() has not
     completed"}, "degraded": {}}}}

Probes never run a health check: they read the last known state the ``health_check``
capability keeps (its background refresh runs the checks), so a kubelet probing every second
costs a few attribute reads.

**Several nodes, one scrape.** Every series carries a ``node`` label (the node id; a metric's
own ``node`` label is renamed ``exported_node``, as Prometheus does with clashing target
labels), families of the same name from several nodes are merged into one (one ``# TYPE``
line), and each node adds ``onex_node_info{node, node_type, capabilities} 1``,
``onex_node_probe{node, probe}`` (1/0 per probe) and, for a node service,
``onex_node_in_flight{node}``. A family whose type differs from the same name on an earlier
node is left out of the scrape (logged once), never written twice.

:class:`OpsServer` serves the app on a real socket: uvicorn (the ``[ops]`` extra) when it is
installed, else a small HTTP/1.1 server written on ``asyncio`` streams (keep-alive, bounded
request heads, nothing else). ``node_service`` starts one from ``serve()`` when ``ops_port`` is
set.

Example:
    >>> from onex_compose import NodeCompute, compose, ops_app
    >>> node = compose(NodeCompute, ["metrics"])(node_id="orders")
    >>> app = ops_app(node)
    >>> app
    <OpsApp nodes=['orders'] endpoints=/metrics /livez /readyz /startupz>
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import parse_qs

from onex_compose._build import Composition, has_capability
from onex_compose.exceptions import ConfigurationError, OnexError

__all__ = ["OpsApp", "OpsServer", "OpsServerError", "ops_app"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PROBES = ("livez", "readyz", "startupz")
_JSON = b"application/json"
_NO_STORE = (b"cache-control", b"no-store")
_SERVERS = ("auto", "uvicorn", "stdlib")


class OpsServerError(OnexError, OSError):
    """The operations endpoint could not listen (address in use, bad host, missing server)."""

    onex_retriable = False


def _require_prometheus() -> None:
    import importlib.util

    if importlib.util.find_spec("prometheus_client") is None:
        raise ConfigurationError(
            "the operations endpoint writes /metrics with prometheus_client, which is not "
            "installed. Install it with: pip install 'onex-compose[ops]'",
            capability="node_service")


# -- one node ---------------------------------------------------------------------------------


class _NodeView:
    """What the endpoint reads from one node (capabilities looked up once)."""

    __slots__ = ("capabilities", "has_health", "has_metrics", "has_profiling", "has_service",
                 "node", "node_type")

    def __init__(self, node: Any) -> None:
        comp = getattr(type(node), "__composition__", None)
        if not isinstance(comp, Composition) or isinstance(node, type):
            raise TypeError(
                f"ops_app() takes node instances (NodeCompute, a composed class's instance...), "
                f"got {type(node).__name__} {node!r:.80}")
        self.node: Any = node  # capability facilities are read by name (metrics, health...)
        cls = type(node)
        self.capabilities = ",".join(sorted(comp.capabilities))
        node_type = getattr(cls, "node_type", None)
        self.node_type = str(getattr(node_type, "value", node_type or ""))
        self.has_metrics = has_capability(cls, "metrics")
        self.has_health = has_capability(cls, "health_check")
        self.has_service = has_capability(cls, "node_service")
        self.has_profiling = has_capability(cls, "profiling")

    @property
    def node_id(self) -> str:
        return str(self.node.node_id)

    # -- probes -------------------------------------------------------------------------------

    def probe(self, name: str) -> tuple[dict[str, str], dict[str, str]]:
        """(failing, degraded) for the probe ``name``: check name -> reason."""
        failing: dict[str, str] = {}
        degraded: dict[str, str] = {}
        node = self.node
        health = node.health if self.has_health else None
        if name == "livez":
            if health is not None and not health.is_live():
                failing["health_refresh"] = (
                    "the background health refresh stopped or its last report is overdue "
                    "(the event loop may be blocked)")
            return failing, degraded
        started = bool(node._onex_started)
        if not started:
            failing["started"] = ("start() has not completed" if not node._onex_closed
                                  else "the node is closed")
        elif health is not None and not health.is_started():
            failing["started"] = "the health monitor has not started"
        if name == "startupz":
            return failing, degraded
        if self.has_service and node.service.stopping:
            failing["draining"] = "the service is shutting down"
        if health is not None:
            self._health_state(health, failing, degraded, started)
        return failing, degraded

    @staticmethod
    def _health_state(health: Any, failing: dict[str, str], degraded: dict[str, str],
                      started: bool) -> None:
        report = health.last_report or {}
        checks: Mapping[str, Any] = report.get("checks") or {}
        for check, result in checks.items():
            status = result.get("status")
            if status == "unhealthy":
                failing[f"check:{check}"] = str(result.get("reason", "unhealthy"))
            elif status == "degraded":
                degraded[f"check:{check}"] = str(result.get("reason", "degraded"))
        for check in health.names:
            if check not in checks:
                failing[f"check:{check}"] = "has not run since it was registered"
        if started and not health.is_ready() and not any(k.startswith("check:") for k in failing):
            failing["checks"] = "the registered checks have not all run since the last change"

    # -- metrics ------------------------------------------------------------------------------

    def families(self) -> Iterable[Any]:
        if not self.has_metrics:
            return ()
        return self.node.metrics.registry.collect()  # type: ignore[no-any-return]

    def profile(self, top: int | None) -> Any:
        report = self.node.profiler.report(top=top)
        text = report.to_json()
        return json.loads(text) if isinstance(text, str | bytes) else text


# -- the merged collector -----------------------------------------------------------------------


class _Scrape:
    """A ``prometheus_client`` collector over several nodes: one family per name, ``node`` labels.

    ``prometheus_client``'s encoders (``generate_latest``, OpenMetrics) take any object with
    ``collect()``, so the exposition itself is theirs.
    """

    def __init__(self, views: list[_NodeView], names: frozenset[str] | None,
                 warned: set[tuple[str, str]]) -> None:
        self._views = views
        self._names = names
        self._warned = warned

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily, Metric
        from prometheus_client.samples import Sample

        info = GaugeMetricFamily(
            "onex_node_info", "the node: its id, type and capabilities (always 1)",
            labels=["node", "node_type", "capabilities"])
        probes = GaugeMetricFamily(
            "onex_node_probe", "1 when the node passes the probe (livez, readyz, startupz)",
            labels=["node", "probe"])
        in_flight = GaugeMetricFamily(
            "onex_node_in_flight", "process() calls in flight on a node service",
            labels=["node"])
        merged: dict[str, Any] = {}
        owner: dict[str, str] = {}  # sample name -> family that writes it
        for fam in (info, probes, in_flight):
            merged[fam.name] = fam
            owner[fam.name] = fam.name
        for view in self._views:
            nid = view.node_id
            info.add_metric([nid, view.node_type, view.capabilities], 1.0)
            for probe in PROBES:
                probes.add_metric([nid, probe], 0.0 if view.probe(probe)[0] else 1.0)
            if view.has_service:
                in_flight.add_metric([nid], float(view.node.service.in_flight))
            for fam in view.families():
                key = fam.name
                target = merged.get(key)
                if target is not None and target.type != fam.type:
                    self._conflict(nid, key, f"it is a {fam.type} here but a {target.type} on "
                                   "an earlier node")
                    continue
                if target is None:
                    names = _series_names(key, fam.type)
                    taken = next((owner[n] for n in names if n in owner), None)
                    if taken is not None:
                        self._conflict(nid, key, f"its series clash with family {taken!r}")
                        continue
                    target = merged[key] = Metric(key, fam.documentation, fam.type, fam.unit)
                    for n in names:
                        owner[n] = key
                add = target.samples.append
                new = tuple.__new__
                for sample in fam.samples:
                    labels = sample[1]
                    if "node" in labels:
                        labels = {("exported_node" if k == "node" else k): v
                                  for k, v in labels.items()}
                    # Sample(name, {"node": ..., **labels}, value, ...) without _replace's cost
                    add(new(Sample, (sample[0], {"node": nid, **labels}, *sample[2:])))
        wanted = self._names
        for key, fam in merged.items():
            if wanted is None or key in wanted or any(s.name in wanted for s in fam.samples):
                yield fam

    def _conflict(self, node_id: str, family: str, why: str) -> None:
        if (node_id, family) in self._warned:
            return
        self._warned.add((node_id, family))
        from onex_compose.capabilities._log import logger

        logger.warning("ops endpoint: metric family {!r} of node {!r} left out of the scrape: "
                       "{} (rename the metric on one of the nodes)", family, node_id, why)


# -- the ASGI application -----------------------------------------------------------------------


class OpsApp:
    """The operations endpoint of one or more nodes, as an ASGI 3 application.

    Build it with :func:`ops_app` or ``node.ops_app()``. Mount it anywhere (the mount prefix
    is taken from ``root_path``), or serve it with :class:`OpsServer` / ``node_service``.

    Attributes:
        nodes: the nodes served, in order.
    """

    def __init__(self, nodes: Iterable[Any]) -> None:
        views = [_NodeView(n) for n in nodes]
        if not views:
            raise ValueError("ops_app() needs at least one node")
        seen: dict[str, Any] = {}
        for view in views:
            other = seen.setdefault(view.node_id, view.node)
            if other is not view.node:
                raise ValueError(
                    f"ops_app(): two nodes share node_id {view.node_id!r}, so their series "
                    "would collide in the scrape; give each node a distinct node_id= when "
                    "creating it")
        if any(v.has_metrics for v in views):
            _require_prometheus()
        self._views = views
        self._warned: set[tuple[str, str]] = set()
        self.nodes = tuple(v.node for v in views)
        self._routes: dict[str, Callable[[dict[str, list[str]], Mapping[bytes, bytes]],
                                         tuple[int, list[tuple[bytes, bytes]], bytes]]] = {
            "/metrics": self._metrics,
            "/livez": lambda q, h: self._probe("livez"),
            "/readyz": lambda q, h: self._probe("readyz"),
            "/startupz": lambda q, h: self._probe("startupz"),
        }
        if any(v.has_profiling for v in views):
            self._routes["/debug/profile"] = self._profile

    @property
    def endpoints(self) -> list[str]:
        """The paths this app answers."""
        return list(self._routes)

    def __repr__(self) -> str:
        return (f"<OpsApp nodes={[v.node_id for v in self._views]!r} "
                f"endpoints={' '.join(self._routes)}>")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":  # a websocket: refuse it
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        status, headers, body = self.respond(
            scope["method"], _route_path(scope), scope.get("query_string", b""),
            dict(scope.get("headers") or ()))
        headers.append((b"content-length", str(len(body)).encode("ascii")))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})

    def respond(self, method: str, path: str, query: bytes | str,
                headers: Mapping[bytes, bytes]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Answer one request: ``(status, headers, body)`` (what ``__call__`` sends).

        Args:
            method: ``GET``, ``HEAD``...
            path: the path below the mount point (``/metrics``).
            query: the raw query string.
            headers: request headers, lower-case byte names.
        """
        if len(path) > 1:
            path = path.rstrip("/")
        route = self._routes.get(path)
        if route is None:
            return _json(404, {"error": f"no endpoint {path}", "endpoints": self.endpoints})
        if method not in ("GET", "HEAD"):
            status, out, body = _json(405, {"error": f"{method} is not allowed on {path}; use GET"})
            out.append((b"allow", b"GET, HEAD"))
            return status, out, body
        if isinstance(query, bytes):
            query = query.decode("latin-1")
        try:
            return route(parse_qs(query), headers)
        except Exception as exc:  # never let a scrape take the server down
            from onex_compose.capabilities._log import logger

            logger.opt(exception=exc).warning("ops endpoint: {} failed: {}", path, exc)
            return _json(500, {"error": f"{path} failed: {type(exc).__name__}: {exc}"})

    # -- handlers -----------------------------------------------------------------------------

    def _metrics(self, query: dict[str, list[str]],
                 headers: Mapping[bytes, bytes]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        from prometheus_client.exposition import choose_encoder, gzip_accepted

        names = query.get("name[]")
        scrape = _Scrape(self._views, frozenset(names) if names else None, self._warned)
        encoder, content_type = choose_encoder(headers.get(b"accept", b"").decode("latin-1"))
        body = encoder(scrape)
        out = [(b"content-type", content_type.encode("latin-1")), _NO_STORE]
        if gzip_accepted(headers.get(b"accept-encoding", b"").decode("latin-1")):
            body = gzip.compress(body, compresslevel=6)
            out.append((b"content-encoding", b"gzip"))
        return 200, out, body

    def metrics_text(self, accept: str = "") -> bytes:
        """The scrape ``/metrics`` would answer for ``accept`` (no HTTP involved)."""
        return self._metrics({}, {b"accept": accept.encode("latin-1")})[2]

    def probe(self, name: str) -> tuple[bool, dict[str, Any]]:
        """Evaluate ``livez``, ``readyz`` or ``startupz``: ``(ok, body)``."""
        if name not in PROBES:
            raise ValueError(f"unknown probe {name!r}; use one of {', '.join(PROBES)}")
        nodes: dict[str, Any] = {}
        failing: list[str] = []
        for view in self._views:
            bad, degraded = view.probe(name)
            nodes[view.node_id] = {"status": "fail" if bad else "ok", "failing": bad,
                                   "degraded": degraded}
            failing.extend(f"{view.node_id}: {check}" for check in bad)
        return not failing, {"status": "fail" if failing else "ok", "probe": name,
                             "failing": failing, "nodes": nodes}

    def _probe(self, name: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        ok, body = self.probe(name)
        return _json(200 if ok else 503, body)

    def _profile(self, query: dict[str, list[str]],
                 headers: Mapping[bytes, bytes]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        top: int | None = None
        if query.get("top"):
            try:
                top = int(query["top"][0])
            except ValueError:
                return _json(400, {"error": f"top must be an integer, got {query['top'][0]!r}"})
        views = [v for v in self._views if v.has_profiling]
        wanted = query.get("node")
        if wanted:
            views = [v for v in views if v.node_id in wanted]
            if not views:
                return _json(404, {"error": f"no node {wanted[0]!r} with profiling here",
                                   "nodes": [v.node_id for v in self._views if v.has_profiling]})
        if len(self._views) == 1 or (wanted and len(views) == 1):
            return _json(200, views[0].profile(top))
        return _json(200, {v.node_id: v.profile(top) for v in views})


_SUFFIXES = {
    "counter": ("", "_total", "_created"),
    "histogram": ("", "_bucket", "_count", "_sum", "_created", "_gsum", "_gcount"),
    "gaugehistogram": ("", "_bucket", "_gsum", "_gcount"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("", "_info"),
}


def _series_names(family: str, kind: str) -> tuple[str, ...]:
    """Every sample name a family of this type may write (a family claims them all)."""
    return tuple(family + suffix for suffix in _SUFFIXES.get(kind, ("",)))


def _route_path(scope: Scope) -> str:
    path = str(scope.get("path") or "/")
    root = str(scope.get("root_path") or "")
    if root and path.startswith(root):  # mounted: the path still carries the mount prefix
        path = path[len(root):] or "/"
    return path


def _json(status: int, body: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    data = json.dumps(body, default=str, separators=(",", ":")).encode("utf-8")
    return status, [(b"content-type", _JSON), _NO_STORE], data


def ops_app(*nodes: Any) -> OpsApp:
    """One operations endpoint (an ASGI app) for ``nodes``: one scrape, probes over all of them.

    Args:
        *nodes: node instances; their ``node_id`` values must be distinct.

    Raises:
        ValueError: no node, or two nodes with the same ``node_id``.
        TypeError: something that is not a node.
        ConfigurationError: a node composes ``metrics`` but prometheus_client is missing.

    Example:
        >>> from onex_compose import NodeCompute, compose, ops_app
        >>> Service = compose(NodeCompute, ["metrics"])
        >>> app = ops_app(Service(node_id="a"), Service(node_id="b"))
        >>> b'onex_node_info{capabilities="metrics",node="a",node_type="COMPUTE"} 1.0' in (
        ...     app.metrics_text())
        True
        >>> app.probe("readyz")[1]["failing"]
        ['a: started', 'b: started']
    """
    return OpsApp(nodes)


# -- serving it -----------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise OpsServerError(
            f"the operations endpoint cannot listen on {host}:{port}: {exc.strerror or exc}. "
            "Choose another ops_port (0 picks a free one) or ops_host.") from exc
    sock.setblocking(False)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_available() -> bool:
    """Whether uvicorn (the ``[ops]`` extra) can be imported."""
    import importlib.util

    return importlib.util.find_spec("uvicorn") is not None


class OpsServer:
    """Serves an ASGI app (an :class:`OpsApp`) on ``host:port`` inside the running event loop.

    Args:
        app: the ASGI application.
        host: the address to listen on (``0.0.0.0`` in a container, so the kubelet and
            Prometheus reach it).
        port: the port; ``0`` picks a free one (see :attr:`port` / :attr:`url` after start).
        server: ``auto`` (uvicorn when installed, else the stdlib server), ``uvicorn`` or
            ``stdlib``.

    Example:
        >>> import asyncio, urllib.request
        >>> from onex_compose import NodeCompute
        >>> async def main():
        ...     server = OpsServer(NodeCompute(node_id="n").ops_app(), port=0, server="stdlib")
        ...     await server.start()
        ...     body = await asyncio.to_thread(
        ...         lambda: urllib.request.urlopen(server.url + "/livez").read())
        ...     await server.stop()
        ...     return json.loads(body)["status"]
        >>> asyncio.run(main())
        'ok'
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0,
                 server: Literal["auto", "uvicorn", "stdlib"] = "auto") -> None:
        if server not in _SERVERS:
            raise ConfigurationError(
                f"ops server {server!r} is unknown; use one of {', '.join(_SERVERS)}",
                capability="node_service")
        if server == "uvicorn" and not uvicorn_available():
            raise ConfigurationError(
                "ops_server 'uvicorn' needs uvicorn, which is not installed. Install it with: "
                "pip install 'onex-compose[ops]' (or use ops_server: stdlib)",
                capability="node_service")
        self.app = app
        self.host = host
        self.requested_port = port
        self.kind: str = ("uvicorn" if uvicorn_available() else "stdlib") if server == "auto" \
            else server
        self.port: int | None = None
        self._sock: socket.socket | None = None
        self._backend: Any = None

    @property
    def url(self) -> str | None:
        """``http://host:port`` once started."""
        return None if self.port is None else _url(self.host, self.port)

    @property
    def running(self) -> bool:
        return self._backend is not None

    def __repr__(self) -> str:
        where = self.url or f"{self.host}:{self.requested_port} (not started)"
        return f"<OpsServer {self.kind} {where}>"

    async def start(self) -> str:
        """Listen and serve; returns the URL. Raises :class:`OpsServerError` when it cannot."""
        if self._backend is not None:
            assert self.url is not None
            return self.url
        sock = _bind(self.host, self.requested_port)
        backend: _Uvicorn | _StdlibServer = (
            _Uvicorn(self.app) if self.kind == "uvicorn" else _StdlibServer(self.app))
        try:
            await backend.start(sock)
        except BaseException:
            sock.close()
            raise
        self._sock, self._backend = sock, backend
        self.port = int(sock.getsockname()[1])
        assert self.url is not None
        return self.url

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, finish or drop open connections within ``timeout`` seconds."""
        backend, self._backend = self._backend, None
        sock, self._sock = self._sock, None
        if backend is None:
            return
        try:
            await backend.stop(max(timeout, 0.05))
        finally:
            if sock is not None:
                sock.close()


class _Uvicorn:
    """uvicorn's ``Server`` driven by hand: no signal capture (node_service owns the signals),
    no logging configuration, our own socket (so ``port=0`` is known at once)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.server: Any = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        import uvicorn

        config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False,
                                log_level="warning", server_header=False, proxy_headers=False,
                                timeout_graceful_shutdown=5)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self.server = server
        self.task = asyncio.get_running_loop().create_task(server.main_loop(),
                                                           name="onex-ops-uvicorn")

    async def stop(self, timeout: float) -> None:
        server, task = self.server, self.task
        server.should_exit = True
        server.config.timeout_graceful_shutdown = max(1, int(timeout))
        try:
            async with asyncio.timeout(timeout):
                if task is not None:
                    await task
                await server.shutdown()
        except TimeoutError:
            server.force_exit = True
            if task is not None:
                task.cancel()
            for connection in list(server.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
            for srv in getattr(server, "servers", ()):
                srv.close()


class _StdlibServer:
    """A small HTTP/1.1 server on asyncio streams that runs an ASGI app (GET-sized requests)."""

    MAX_HEAD = 16 * 1024
    MAX_BODY = 64 * 1024
    IDLE_TIMEOUT = 30.0

    def __init__(self, app: Any) -> None:
        self.app = app
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task[Any]] = set()
        self.idle: set[asyncio.StreamWriter] = set()  # waiting for their next request
        self.closing = False

    async def start(self, sock: socket.socket) -> None:
        self.server = await asyncio.start_server(self._accept, sock=sock, limit=self.MAX_HEAD)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        try:
            await self._serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.idle.discard(writer)
            if task is not None:
                self.connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        while not self.closing:
            self.idle.add(writer)
            try:
                async with asyncio.timeout(self.IDLE_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError):
                return
            except asyncio.LimitOverrunError:
                await self._write(writer, 431, [], b"request head too large\n", close=True)
                return
            finally:
                self.idle.discard(writer)
            lines = head[:-4].decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await self._write(writer, 400, [], b"bad request line\n", close=True)
                return
            method, target, version = parts
            headers: list[tuple[bytes, bytes]] = []
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name != name.strip():
                    await self._write(writer, 400, [], b"bad header line\n", close=True)
                    return
                headers.append((name.lower().encode("latin-1"), value.strip().encode("latin-1")))
            fields = dict(headers)
            if b"transfer-encoding" in fields:
                await self._write(writer, 411, [], b"send a Content-Length body\n", close=True)
                return
            try:
                length = int(fields.get(b"content-length", b"0"))
            except ValueError:
                length = -1
            if length < 0 or length > self.MAX_BODY:
                await self._write(writer, 413, [], b"request body too large\n", close=True)
                return
            body = await reader.readexactly(length) if length else b""
            connection = fields.get(b"connection", b"").lower()
            close = connection == b"close" or (version == "HTTP/1.0" and connection != b"keep-alive")
            path, _, query = target.partition("?")
            scope = {
                "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": version[5:], "method": method.upper(), "scheme": "http",
                "path": path, "raw_path": path.encode("latin-1"), "root_path": "",
                "query_string": query.encode("latin-1"), "headers": headers,
                "client": tuple(peer[:2]) if peer else None,
                "server": tuple(local[:2]) if local else None,
            }
            status, out_headers, out_body = await self._run_app(scope, body)
            await self._write(writer, status, out_headers, out_body, close=close or self.closing,
                              head_only=scope["method"] == "HEAD")
            if close:
                return

    async def _run_app(self, scope: dict[str, Any],
                       body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        sent: dict[str, Any] = {"status": 500, "headers": [], "body": []}
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never disconnects mid-request here
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                sent["headers"] = list(message.get("headers") or [])
            elif message["type"] == "http.response.body":
                sent["body"].append(bytes(message.get("body", b"")))

        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            from onex_compose.capabilities._log import logger

            logger.opt(exception=exc).warning("ops endpoint: the app raised: {}", exc)
            return 500, [], b"internal error\n"
        return int(sent["status"]), sent["headers"], b"".join(sent["body"])

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, status: int, headers: list[tuple[bytes, bytes]],
                     body: bytes, *, close: bool, head_only: bool = False) -> None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        names = {name.lower() for name, _ in headers}
        lines = [f"HTTP/1.1 {status} {reason}".encode("latin-1")]
        if b"content-type" not in names:
            headers = [*headers, (b"content-type", b"text/plain; charset=utf-8")]
        if b"content-length" not in names:
            headers = [*headers, (b"content-length", str(len(body)).encode("ascii"))]
        headers = [*headers, (b"date", time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                                      time.gmtime()).encode("ascii")),
                   (b"connection", b"close" if close else b"keep-alive")]
        lines.extend(name + b": " + value for name, value in headers)
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else body))
        await writer.drain()

    async def stop(self, timeout: float) -> None:
        self.closing = True
        server = self.server
        if server is not None:
            server.close()
        for writer in list(self.idle):  # idle keep-alive connections end now; busy ones
            writer.close()              # answer their request first, then close
        pending = list(self.connections)
        if pending:
            _done, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await server.wait_closed()
