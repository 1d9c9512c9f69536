"""Profiles and the bottleneck report: functions, pipeline layers, slowest calls, flame stacks.

A kept :class:`Profile` holds the raw profiler output (a ``cProfile.Profile`` or a pyinstrument
``Session``) and is only digested when a report asks for it, so a profiled call costs no more
than the profiler itself. Digesting gives, per profile:

* per function ``(qualname, "file:line")``: calls, total (inclusive) and self seconds;
* per layer: self seconds. A frame's layer is the capability whose module
  (``onex_compose.capabilities.<name>``) holds it, or whose ``_guard_<name>`` closure it is;
  user code (any file outside the standard library, site-packages and onex_compose) is
  ``node``. Time in a frame that belongs to no layer (the standard library, a built-in,
  onex_compose's own plumbing) counts for the nearest caller that does, so an
  ``asyncio.sleep`` awaited by the rate limiter is ``rate_limiting`` time; with no such caller
  it is ``other``. cProfile records caller edges but not stacks, so in deterministic mode such
  time is split over the callers in proportion to the edges' self time;
* collapsed stacks (``a;b;c`` -> microseconds of self time) for flame graphs. pyinstrument
  records real stacks; cProfile stacks are rebuilt from its caller/callee edges (each edge's
  share of the callee's time is spread over the callee's own callees), which is exact for a
  call tree and an approximation where one function is reached along several paths.
"""

from __future__ import annotations

import json
import os
import re
import sysconfig
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import CodeType
from typing import Any, NamedTuple

from onex_compose.capabilities.profiling._latency import LatencySummary

__all__ = ["FunctionStat", "LayerStat", "MemorySite", "Profile", "ProfileReport", "SlowCall"]


class FunctionStat(NamedTuple):
    """One function's share of the profiled time (``share`` = self time / all self time).

    ``calls`` is exact in deterministic mode; a sampling profile sees stacks, not calls, so there
    it counts the distinct places the function was seen in per profile (a lower bound).
    """

    qualname: str
    location: str
    calls: int
    total_s: float
    self_s: float
    share: float


class SlowCall(NamedTuple):
    """A slow (or profiled) call: its duration and the ids to find it in traces and logs."""

    duration_s: float
    trace_id: str | None
    correlation_id: str | None


class MemorySite(NamedTuple):
    """An allocation site: bytes (and blocks) still allocated after the profiled call(s)."""

    location: str
    size_bytes: int
    count: int  # type: ignore[assignment]  # (shadows tuple.count: the issue's field name)


LayerStat = dict  # {"seconds": float, "share": float}


def _prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    out = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")
           if k in paths}
    import onex_compose

    out.add(os.path.realpath(os.path.dirname(onex_compose.__file__)))
    return tuple(sorted(p + os.sep for p in out))


_OTHER_PREFIXES: tuple[str, ...] | None = None
_CAP_DIR: str | None = None
_OWN_DIR = os.path.realpath(os.path.dirname(__file__)) + os.sep
_GUARD_QUALNAME = re.compile(r"\._guard_(?:sync_)?([A-Za-z0-9_]+)\.<locals>\.")
_layer_cache: dict[tuple[str, str], str | None] = {}
_DIGEST_LOCK = threading.Lock()


def _cap_dir() -> str:
    global _CAP_DIR
    if _CAP_DIR is None:
        import onex_compose.capabilities as caps

        _CAP_DIR = os.path.realpath(next(iter(caps.__path__))) + os.sep
    return _CAP_DIR


def layer_of(filename: str, qualname: str, guards: Mapping[tuple[str, int], str] | None = None,
             line: int = 0) -> str | None:
    """The layer a frame belongs to: a capability name, ``"node"``, or ``None`` (no layer).

    Example:
        >>> layer_of("/app/pricing.py", "Pricer._guard_audit.<locals>.guarded")
        'audit'
        >>> layer_of("/app/pricing.py", "Pricer.process")
        'node'
        >>> layer_of("<built-in>", "time.sleep") is None
        True
    """
    if guards:
        hit = guards.get((filename, line))
        if hit is not None:
            return hit
    key = (filename, qualname)
    try:
        return _layer_cache[key]
    except KeyError:
        pass
    global _OTHER_PREFIXES
    m = _GUARD_QUALNAME.search(qualname)
    result: str | None
    if m:
        result = m.group(1)
    elif not filename or filename.startswith(("<", "~")):
        result = None
    else:
        real = os.path.realpath(filename)
        cap = _cap_dir()
        if real.startswith(cap):
            first = real[len(cap):].split(os.sep, 1)[0].removesuffix(".py")
            result = None if first.startswith("_") else first
        else:
            if _OTHER_PREFIXES is None:
                _OTHER_PREFIXES = _prefixes()
            result = None if real.startswith(_OTHER_PREFIXES) else "node"
    if len(_layer_cache) < 100_000:
        _layer_cache[key] = result
    return result


def guard_codes(cls: type | None) -> dict[tuple[str, int], str]:
    """``(file, first line) -> capability`` for the closures of ``cls``'s ``_guard_*`` hooks.

    Sampling profiles name a frame by function name, file and first line (no qualname); this
    map recognises the guard closures among them.
    """
    out: dict[tuple[str, int], str] = {}
    if cls is None:
        return out
    for attr in dir(cls):
        if not attr.startswith("_guard_"):
            continue
        code = getattr(getattr(cls, attr, None), "__code__", None)
        if not isinstance(code, CodeType):
            continue
        name = attr.removeprefix("_guard_").removeprefix("sync_")
        for const in code.co_consts:
            if isinstance(const, CodeType):
                out[(const.co_filename, const.co_firstlineno)] = name
    return out


def _flame_name(qualname: str, location: str) -> str:
    base = location.rsplit(os.sep, 1)[-1]
    return f"{qualname}({base})".replace(" ", "_").replace(";", ":")


class _Digest:
    """One profile, digested: functions, layers and collapsed stacks (all in seconds)."""

    __slots__ = ("functions", "layers", "stacks")

    def __init__(self) -> None:
        self.functions: dict[tuple[str, str], list[float]] = {}  # [calls, total, self]
        self.layers: dict[str, float] = {}
        self.stacks: dict[str, float] = {}


def _code_key(code: Any) -> tuple[str, str, str, int]:
    """``(qualname, "file:line", file, first line)`` for a cProfile entry's code."""
    if isinstance(code, CodeType):
        return (code.co_qualname, f"{code.co_filename}:{code.co_firstlineno}",
                code.co_filename, code.co_firstlineno)
    return (str(code), "~:0", "~", 0)


def _digest_cprofile(raw: Any, guards: Mapping[tuple[str, int], str]) -> _Digest:
    d = _Digest()
    entries = raw.getstats()
    info: dict[Any, tuple[str, str, str, int]] = {}
    own: set[Any] = set()
    for e in entries:
        k = _code_key(e.code)
        info[e.code] = k
        if k[2].startswith(_OWN_DIR) or "of '_lsprof.Profiler' objects" in k[0]:
            own.add(e.code)  # the profiler's own frames (stop, disable): not the call's time
    callers: dict[Any, list[tuple[Any, float]]] = {}
    callees: dict[Any, list[tuple[Any, float, float]]] = {}
    by_code = {}
    for e in entries:
        if e.code in own:
            continue
        by_code[e.code] = e
        qual, loc, _f, _l = info[e.code]
        d.functions[(qual, loc)] = [float(e.callcount), e.totaltime, e.inlinetime]
        for sub in e.calls or ():
            if sub.code in own:
                continue
            callers.setdefault(sub.code, []).append((e.code, sub.inlinetime))
            callees.setdefault(e.code, []).append((sub.code, sub.totaltime, sub.inlinetime))

    own_layer: dict[Any, str | None] = {}
    for code, (qual, _loc, fname, line) in info.items():
        own_layer[code] = layer_of(fname, qual, guards, line)

    memo: dict[Any, dict[str, float]] = {}

    def fractions(code: Any, depth: int = 0) -> dict[str, float]:
        got = memo.get(code)
        if got is not None:
            return got
        layer = own_layer.get(code)
        if layer is not None:
            memo[code] = {layer: 1.0}
            return memo[code]
        memo[code] = {"other": 1.0}  # a cycle or a deep chain resolves to "other"
        edges = [(c, w) for c, w in callers.get(code, ()) if c not in own]
        total = sum(w for _c, w in edges)
        if depth > 200 or not edges:
            return memo[code]
        out: dict[str, float] = {}
        for c, w in edges:
            share = (w / total) if total > 0 else 1.0 / len(edges)
            for lay, f in fractions(c, depth + 1).items():
                out[lay] = out.get(lay, 0.0) + share * f
        memo[code] = out
        return out

    for code, e in by_code.items():
        if e.inlinetime <= 0:
            continue
        for lay, f in fractions(code).items():
            d.layers[lay] = d.layers.get(lay, 0.0) + e.inlinetime * f

    # collapsed stacks from the call graph, starting at the functions nobody recorded calling
    roots = [c for c in by_code if not [x for x, _w in callers.get(c, ()) if x in by_code]]
    names = {c: _flame_name(info[c][0], info[c][1]) for c in by_code}
    budget = [20_000]  # bounds the expansion of a heavily shared call graph

    def walk(code: Any, path: tuple[str, ...], on_path: frozenset[Any], t: float) -> None:
        e = by_code[code]
        if budget[0] <= 0 or t <= 0:
            return
        budget[0] -= 1
        scale = t / e.totaltime if e.totaltime > 0 else 0.0
        here = (*path, names[code])
        key = ";".join(here)
        self_t = e.inlinetime * scale
        for sub, sub_total, _sub_inline in callees.get(code, ()):
            if sub in on_path or sub not in by_code:
                self_t += sub_total * scale  # recursion: keep the time here
                continue
            walk(sub, here, on_path | {sub}, sub_total * scale)
        if self_t > 0:
            d.stacks[key] = d.stacks.get(key, 0.0) + self_t

    for r in roots:
        walk(r, (), frozenset({r}), by_code[r].totaltime)
    return d


def _digest_pyinstrument(session: Any, guards: Mapping[tuple[str, int], str]) -> _Digest:
    d = _Digest()
    root = session.root_frame()
    if root is None:
        return d
    stack: list[tuple[Any, tuple[str, ...], str]] = [(root, (), "other")]
    while stack:
        frame, path, inherited = stack.pop()
        if frame.is_synthetic:
            continue
        fname = frame.file_path or "~"
        cls_name = frame.class_name
        qual = f"{cls_name}.{frame.function}" if cls_name else frame.function
        line = frame.line_no or 0
        loc = f"{fname}:{line}"
        if fname.startswith(_OWN_DIR):
            for child in frame.children:
                stack.append((child, path, inherited))
            continue
        layer = layer_of(fname, qual, guards, line) or inherited
        real_children = [c for c in frame.children if not c.is_synthetic]
        self_t = max(0.0, frame.time - sum(c.time for c in real_children))
        here = (*path, _flame_name(qual, loc))
        entry = d.functions.setdefault((qual, loc), [0.0, 0.0, 0.0])
        entry[0] += 1  # sampling sees frames, not calls: one per distinct stack position
        if not any(p == here[-1] for p in path):
            entry[1] += frame.time
        entry[2] += self_t
        if self_t > 0:
            d.layers[layer] = d.layers.get(layer, 0.0) + self_t
            key = ";".join(here)
            d.stacks[key] = d.stacks.get(key, 0.0) + self_t
        for child in real_children:
            stack.append((child, here, layer))
    return d


class Profile:
    """One profiled call or capture block, kept in the profiler's ring.

    Attributes:
        label: the operation (``"process"``, a ``profiled`` name) or the capture's label.
        mode: ``"deterministic"`` or ``"sampling"``.
        duration: wall seconds of the call.
        trace_id / correlation_id: the ids of the call (``None`` when unknown).
        memory: top allocation sites still allocated after the call (``memory`` on), or
            ``None``; ``peak_bytes``: the traced peak during the call.
        seq: the profiler's call sequence number.
    """

    __slots__ = ("_digest", "correlation_id", "duration", "guards", "label", "memory", "mode",
                 "peak_bytes", "raw", "seq", "trace_id")

    def __init__(self, label: str, mode: str, raw: Any, duration: float, *,
                 trace_id: str | None = None, correlation_id: str | None = None,
                 memory: list[MemorySite] | None = None, peak_bytes: int | None = None,
                 seq: int = 0, guards: Mapping[tuple[str, int], str] | None = None) -> None:
        self.label, self.mode, self.raw, self.duration = label, mode, raw, duration
        self.trace_id, self.correlation_id = trace_id, correlation_id
        self.memory, self.peak_bytes, self.seq = memory, peak_bytes, seq
        self.guards = guards or {}
        self._digest: _Digest | None = None

    def __repr__(self) -> str:
        return (f"Profile({self.label!r}, mode={self.mode!r}, duration={self.duration:.6f}s, "
                f"trace_id={self.trace_id!r})")

    def digest(self) -> _Digest:
        """The digested profile (computed once, on first use; thread-safe)."""
        got = self._digest
        if got is not None:
            return got
        with _DIGEST_LOCK:
            if self._digest is None:
                if self.raw is None:
                    self._digest = _Digest()
                elif self.mode == "sampling":
                    self._digest = _digest_pyinstrument(self.raw, self.guards)
                else:
                    self._digest = _digest_cprofile(self.raw, self.guards)
                self.raw = None  # the digest is all a report needs
            return self._digest


@dataclass(frozen=True)
class ProfileReport:
    """The bottleneck report, aggregated over the kept profiles.

    Attributes:
        profiles: how many profiles it covers (0: an empty report, not an error).
        modes: profiles per mode.
        duration_s: the profiled calls' wall time.
        functions: the top functions by self time.
        capabilities: seconds and share of self time per layer (capability, ``node``,
            ``other``), largest first.
        slowest_calls: the slowest profiled or slow calls, slowest first.
        memory: top allocation sites (profiles taken with ``memory`` on).
        latencies: each operation's latency summary.
        stacks: collapsed stacks (``a;b;c``) to microseconds of self time.

    Example:
        >>> r = ProfileReport.empty()
        >>> r.profiles, r.to_collapsed()
        (0, '')
        >>> ProfileReport.from_json(r.to_json()) == r
        True
    """

    profiles: int
    modes: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    functions: list[FunctionStat] = field(default_factory=list)
    capabilities: dict[str, dict[str, float]] = field(default_factory=dict)
    slowest_calls: list[SlowCall] = field(default_factory=list)
    memory: list[MemorySite] = field(default_factory=list)
    latencies: dict[str, LatencySummary] = field(default_factory=dict)
    stacks: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> ProfileReport:
        """A report with no profiles."""
        return cls(profiles=0)

    @classmethod
    def build(cls, profiles: Iterable[Profile], *, top: int,
              slow: Iterable[tuple[int, SlowCall]] = (),
              latencies: Mapping[str, LatencySummary] | None = None) -> ProfileReport:
        """Aggregate ``profiles`` (see the module doc for what each part means)."""
        kept = list(profiles)
        modes: dict[str, int] = {}
        funcs: dict[tuple[str, str], list[float]] = {}
        layers: dict[str, float] = {}
        stacks: dict[str, float] = {}
        mem: dict[str, list[int]] = {}
        calls: dict[int, SlowCall] = dict(slow)
        duration = 0.0
        for p in kept:
            modes[p.mode] = modes.get(p.mode, 0) + 1
            duration += p.duration
            calls.setdefault(p.seq, SlowCall(p.duration, p.trace_id, p.correlation_id))
            dg = p.digest()
            for k, v in dg.functions.items():
                acc = funcs.setdefault(k, [0.0, 0.0, 0.0])
                acc[0] += v[0]
                acc[1] += v[1]
                acc[2] += v[2]
            for k2, s in dg.layers.items():
                layers[k2] = layers.get(k2, 0.0) + s
            for k3, s in dg.stacks.items():
                stacks[k3] = stacks.get(k3, 0.0) + s
            for site in p.memory or ():
                m = mem.setdefault(site.location, [0, 0])
                m[0] += site.size_bytes
                m[1] += site.count
        total_self = sum(v[2] for v in funcs.values()) or 1.0
        ranked = sorted(funcs.items(), key=lambda kv: (-kv[1][2], kv[0]))[:top]
        functions = [FunctionStat(q, loc, int(v[0]), v[1], v[2], v[2] / total_self)
                     for (q, loc), v in ranked]
        layer_total = sum(layers.values()) or 1.0
        caps = {k: {"seconds": s, "share": s / layer_total}
                for k, s in sorted(layers.items(), key=lambda kv: (-kv[1], kv[0]))}
        slowest = sorted(calls.values(), key=lambda c: -c.duration_s)[:top]
        memory = [MemorySite(loc, v[0], v[1])
                  for loc, v in sorted(mem.items(), key=lambda kv: -kv[1][0])[:top]]
        collapsed = {k: round(v * 1e6) for k, v in stacks.items() if round(v * 1e6) > 0}
        return cls(profiles=len(kept), modes=modes, duration_s=duration, functions=functions,
                   capabilities=caps, slowest_calls=slowest, memory=memory,
                   latencies=dict(latencies or {}), stacks=collapsed)

    # -- output -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what :meth:`to_json` writes)."""
        return {
            "profiles": self.profiles,
            "modes": dict(self.modes),
            "duration_s": self.duration_s,
            "functions": [f._asdict() for f in self.functions],
            "capabilities": {k: dict(v) for k, v in self.capabilities.items()},
            "slowest_calls": [c._asdict() for c in self.slowest_calls],
            "memory": [m._asdict() for m in self.memory],
            "latencies": {k: v._asdict() for k, v in self.latencies.items()},
            "stacks": dict(self.stacks),
        }

    def to_json(self, indent: int | None = None) -> str:
        """The report as JSON (``from_json`` reads it back to an equal report)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> ProfileReport:
        """Read a report written by :meth:`to_json`."""
        data = json.loads(text)
        return cls(
            profiles=int(data["profiles"]),
            modes={str(k): int(v) for k, v in data.get("modes", {}).items()},
            duration_s=float(data.get("duration_s", 0.0)),
            functions=[FunctionStat(**f) for f in data.get("functions", [])],
            capabilities={k: dict(v) for k, v in data.get("capabilities", {}).items()},
            slowest_calls=[SlowCall(**c) for c in data.get("slowest_calls", [])],
            memory=[MemorySite(**m) for m in data.get("memory", [])],
            latencies={k: LatencySummary(**v) for k, v in data.get("latencies", {}).items()},
            stacks={str(k): int(v) for k, v in data.get("stacks", {}).items()},
        )

    def to_collapsed(self) -> str:
        """Collapsed stacks, one ``a;b;c 1234`` line (microseconds) per stack, for
        flamegraph.pl, speedscope or inferno."""
        return "\n".join(f"{k} {v}" for k, v in sorted(self.stacks.items()))

    def to_text(self) -> str:
        """A readable report: layers, top functions, slowest calls, memory, latencies."""
        if not self.profiles and not self.latencies:
            return "no profiles (sample_rate is 0 and nothing was captured)"
        modes = ", ".join(f"{n} {m}" for m, n in sorted(self.modes.items())) or "none"
        lines = [f"{self.profiles} profile(s) ({modes}), {self.duration_s * 1e3:.3f} ms profiled"]
        if self.capabilities:
            lines += ["", "time by layer (self time):"]
            for name, v in self.capabilities.items():
                lines.append(f"  {name:<20} {v['seconds'] * 1e3:10.3f} ms  {v['share']:6.1%}")
        if self.functions:
            lines += ["", "top functions by self time:",
                      f"  {'self ms':>10} {'total ms':>10} {'calls':>7} {'share':>6}  function"]
            for f in self.functions:
                lines.append(f"  {f.self_s * 1e3:10.3f} {f.total_s * 1e3:10.3f} {f.calls:7d} "
                             f"{f.share:6.1%}  {f.qualname} ({f.location})")
        if self.slowest_calls:
            lines += ["", "slowest calls:"]
            for c in self.slowest_calls:
                lines.append(f"  {c.duration_s * 1e3:10.3f} ms  trace={c.trace_id or '-'} "
                             f"correlation={c.correlation_id or '-'}")
        if self.memory:
            lines += ["", "memory still allocated after the call (top sites):"]
            for m in self.memory:
                lines.append(f"  {m.size_bytes / 1024:12.1f} KiB {m.count:8d} blocks  "
                             f"{m.location}")
        if self.latencies:
            lines += ["", "latency (ms): count p50 p95 p99 max mean"]
            for name, s in sorted(self.latencies.items()):
                lines.append(f"  {name:<20} {s.count:8d} {s.p50 * 1e3:9.3f} {s.p95 * 1e3:9.3f} "
                             f"{s.p99 * 1e3:9.3f} {s.max * 1e3:9.3f} {s.mean * 1e3:9.3f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()
