"""Node types and the node base: capability initialisation, lifecycle, pickling.

``NodeCoreBase.__init__`` runs every capability's setup hook once, after the base, in the
resolved dependency order, with that capability's validated configuration (``_initialize_mixins``,
seed 000's name). The per-class *plan* (which hooks, in which order, with which default
configuration) is computed once when the class is created, so creating an instance is a loop
over a tuple. ``start()`` opens resources in dependency order, ``aclose()`` closes them in reverse
and is idempotent; ``async with node:`` does both.

Instances pickle by configuration, not by resource: ``__reduce__`` records the class (a composed
class by its base and capability names, so it is recomposed through the cache), the contract,
the ``capability_config`` and the user's own attributes; unpickling rebuilds every capability's
facilities (locks, connections, tasks) from that configuration.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Mapping
from typing import Any, ClassVar

from onex_compose._build import (
    COMPOSED_MODULE,
    Composition,
    _register_base,
    check_class,
    lookup_composed,
    register_node_base,
)
from onex_compose._config import (
    check_contract,
    coerce_config,
    contract_capabilities,
    contract_config,
    overlay_config,
)
from onex_compose._facility import facilities_of
from onex_compose._node_types import EnumNodeType
from onex_compose._pipeline import guard_order, install_pipeline
from onex_compose._resolve import Options
from onex_compose.exceptions import ConfigurationError, OnexError, did_you_mean

__all__ = [
    "EnumNodeType",
    "NodeCompute",
    "NodeCoreBase",
    "NodeEffect",
    "NodeOrchestrator",
    "NodeReducer",
    "NodeService",
]

_ids = itertools.count(1)
_BOOKKEEPING = frozenset({"_onex_init", "_onex_started", "_onex_closed", "_onex_chain", "contract",
                          "node_id", "_onex_starting"})
_EMPTY = Composition(base=object, capabilities=(), required_by={}, providers={}, overrides={},
                     options=Options(), style="hand-written")


class _Plan:
    """Per-class initialisation plan (computed once per class)."""

    __slots__ = (
        "close_of",
        "closes",
        "default_fast",
        "defaults",
        "facilities",
        "facility_builders",
        "init_mode",
        "key_checks",
        "names",
        "setups",
        "specs",
        "starts",
        "unset_by_default_setup",
    )

    def __init__(self, cls: type, comp: Composition) -> None:
        self.specs = {s.name: s for s in comp.specs}
        self.names = comp.capabilities
        setups = []
        defaults = {}
        starts, closes = [], []
        ordered: dict[str, Any] = {}
        for spec in comp.specs:
            name, default, setup, start, close, facilities = _spec_entry(spec)
            defaults[name] = default
            if setup and callable(hook := getattr(cls, setup, None)):
                setups.append((name, hook, default))  # the class's (a subclass may override it)
            # start/close are looked up on the instance when they run
            if start:
                starts.append((name, start))
            if close:
                closes.append((name, close))
            # in dependency order: a default facility may use its dependencies' facilities
            ordered.update(facilities)
        # then facilities the node classes themselves declare (most-derived wins, as in the MRO)
        for klass in reversed(cls.__mro__):
            own = vars(klass).get("__onex_facilities__")
            if own and "__onex_capability__" not in vars(klass):
                ordered.update(own)
        self.setups = tuple(setups)
        self.defaults = defaults
        self.starts = tuple(starts)
        self.closes = tuple(reversed(closes))
        self.close_of = dict(closes)
        self.facility_builders = tuple(ordered.items())
        self.facilities = frozenset(ordered)
        self.unset_by_default_setup: tuple[tuple[str, Any], ...] | None = None
        self.default_fast = False
        self.init_mode = _init_mode(cls)
        # capabilities whose config can say which keys (secrets) are missing before setup
        self.key_checks = tuple(name for name, _hook, default in setups
                                if callable(getattr(type(default), "missing_keys", None)))


def _init_mode(cls: type) -> str:
    """How ``__init__`` calls the class's ``_initialize_mixins`` (read once per class).

    ``"base"``: the node base's own; ``"positional"``: an override taking ``(contract,
    capability_config)``; ``"keyword"``: one taking ``capability_config`` by keyword only;
    ``"contract"``: seed 000's one-argument override ``_initialize_mixins(self, contract)``.
    """
    fn = getattr(cls, "_initialize_mixins", None)
    if fn is None or fn is vars(NodeCoreBase).get("_initialize_mixins"):
        return "base"
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a callable without a signature: the base's convention
        return "positional"
    for mode, args, kwargs in (("positional", (None, None, None), {}),
                               ("keyword", (None, None), {"capability_config": None})):
        try:
            sig.bind(*args, **kwargs)
        except TypeError:
            continue
        return mode
    return "contract"


def _spec_entry(spec: Any) -> tuple[str, Any, str | None, str | None, str | None, Any]:
    """What a plan needs from one capability, computed once per spec (cold compose budget)."""
    try:
        return spec._loaded["plan_entry"]  # type: ignore[no-any-return]
    except KeyError:
        entry = (spec.name, _default_config(spec.name, spec.config_model),
                 hook_name(None, spec, "setup"), hook_name(None, spec, "start"),
                 hook_name(None, spec, "close"), facilities_of(spec.mixin))
        spec._loaded["plan_entry"] = entry
        return entry


def hook_name(cls: type | None, spec: Any, kind: str) -> str | None:
    """The name of a capability's ``setup``/``start``/``close`` hook on ``cls``, if it has one.

    Declared in the spec, or by convention ``<kind>_<capability>`` (``setup_caching``). Whether
    the mixin defines it is cached per spec; ``cls`` is asked only then (a subclass may
    override the hook, never add one the mixin lacks).
    """
    key = f"hook_{kind}"
    try:
        name = spec._loaded[key]
    except KeyError:
        name = getattr(spec, kind) or f"{kind}_{spec.name}"
        if not callable(getattr(spec.mixin, name, None)):
            name = None
        spec._loaded[key] = name
    if name is None or (cls is not None and not callable(getattr(cls, name, None))):
        return None
    return str(name)


_default_cache: dict[tuple[str, Any], Any] = {}


def _default_config(name: str, model: Any) -> Any:
    key = (name, model)
    try:
        return _default_cache[key]
    except KeyError:
        value = _default_cache[key] = coerce_config(model, None, name)
        return value


_DEFAULT_INIT = (None, None, None)


def _install_fast_init(cls: type, plan: _Plan) -> None:
    """Give ``cls`` a generated ``__init__`` for the default case (no contract, no config).

    The body calls each setup hook in a straight line with its default config (no loop, no
    tuple unpacking, no plan lookups): about 30 ns less per capability than the general path,
    which ``benchmarks/bench_init.py`` measures against a hand-written flat ``__init__``. Any
    other call (a contract, ``capability_config``, ``node_id``, or a subclass instance) goes to
    the general ``NodeCoreBase.__init__``. Installed only where the class's ``__init__`` is the
    base's own, so a user's ``__init__`` is never bypassed.
    """
    env: dict[str, Any] = {"_cls": cls, "_general": NodeCoreBase.__init__,
                           "_DEFAULT_INIT": _DEFAULT_INIT}
    lines = ["def __init__(self, contract=None, *, capability_config=None, node_id=None):",
             "    if contract is not None or capability_config is not None or "
             "node_id is not None or type(self) is not _cls:",
             "        return _general(self, contract, capability_config=capability_config, "
             "node_id=node_id)",
             "    self.contract = None"]
    for i, (_name, setup, default) in enumerate(plan.setups):
        env[f"_s{i}"], env[f"_d{i}"] = setup, default
        lines.append(f"    _s{i}(self, _d{i})")
    for i, (name, build) in enumerate(plan.unset_by_default_setup or ()):
        env[f"_b{i}"] = build
        lines.append(f"    if not hasattr(self, {name!r}):")
        lines.append(f"        setattr(self, {name!r}, _b{i}(self))")
    lines.append("    self._onex_init = _DEFAULT_INIT")
    exec("\n".join(lines), env)
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = NodeCoreBase.__init__.__doc__
    cls.__init__ = init  # type: ignore[misc]


def _check_facility_shadowing(cls: type, comp: Composition, plan: _Plan) -> None:
    """A class member named like a capability's facility would be hidden by the facility the
    node sets on every instance: report it when the class is created, not at the first call."""
    if not plan.facilities:
        return
    for klass in cls.__mro__[:-1]:
        if "__onex_capability__" in vars(klass):
            continue
        clash = plan.facilities.intersection(vars(klass))
        if clash:
            name = min(clash)
            owner = next((s.name for s in comp.specs if name in facilities_of(s.mixin)), "?")
            from onex_compose.exceptions import CapabilityConflictError

            raise CapabilityConflictError(
                owner, klass.__qualname__, kind="base-member", member=name,
                hint=f"{klass.__qualname__} defines {name!r}, but capability {owner!r} sets "
                f"{name!r} on every instance (its facility), which would hide it; rename the "
                "member")


class _NodeId:
    """Class-level default of ``node_id``: ``<ClassName>-<n>``, made on first read and stored on
    the instance (reads of ``node_id`` are rare; the init path stays free of the formatting)."""

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        value = f"{type(obj).__name__}-{next(_ids)}"
        obj.node_id = value
        return value


class NodeCoreBase:
    """The base of every node: capability setup, async lifecycle, pickling.

    Args:
        contract: the node contract (a ``ModelContract*`` or a mapping); each capability's
            subcontract configures it.
        capability_config: configuration keyed by canonical capability name; overrides the
            contract.
        node_id: a stable identifier (default: class name plus a counter).

    Example:
        >>> from onex_compose import NodeCompute, compose
        >>> node = compose(NodeCompute, ["metrics"])(capability_config={"metrics": {}})
        >>> node.metrics.increment("calls")
    """

    node_type: ClassVar[EnumNodeType | None] = None
    # per-instance bookkeeping, defaulted on the class so reads never need self.__dict__
    _onex_init: tuple[Any, Any, dict[str, str] | None] | None = None
    _onex_started: bool = False
    _onex_closed: bool = False
    _onex_chain: tuple[Any, Any] | None = None
    _onex_starting: asyncio.Future[None] | None = None
    node_id: str = _NodeId()  # type: ignore[assignment]
    #: names the base owns that no capability may supply, even with prefer=
    __onex_protected__: ClassVar[frozenset[str]] = frozenset({
        "start", "aclose", "process", "_initialize_mixins", "contract", "node_id"})
    #: instance attributes the base sets (part of the base-clash scan like its methods)
    __onex_instance_attrs__: ClassVar[frozenset[str]] = frozenset({"contract", "node_id"})
    __composition__: ClassVar[Composition] = _EMPTY
    __onex_plan__: ClassVar[_Plan]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        comp = vars(cls).get("__composition__")
        if not isinstance(comp, Composition):
            caps = [k for k in cls.__mro__ if "__onex_capability__" in vars(k)]
            comp = check_class(cls) if caps else _EMPTY
            cls.__composition__ = comp
        plan = cls.__onex_plan__ = _Plan(cls, comp)
        _check_facility_shadowing(cls, comp, plan)
        install_pipeline(cls, guard_order(cls, comp.specs))
        _register_base(cls)

    def __init__(self, contract: Any = None, *, capability_config: Mapping[str, Any] | None = None,
                 node_id: str | None = None) -> None:
        self.contract = contract
        if node_id is not None:
            self.node_id = node_id
        cls = type(self)
        plan = cls.__onex_plan__
        if plan.default_fast and contract is None and not capability_config:
            # the common case, inlined: every setup with its default config, in dependency order
            for _name, setup, default in plan.setups:
                setup(self, default)
            for name, build in plan.unset_by_default_setup or ():
                if not hasattr(self, name):
                    setattr(self, name, build(self))
            self._onex_init = _DEFAULT_INIT
            return
        if cls._initialize_mixins is not NodeCoreBase._initialize_mixins:
            # a user-written _initialize_mixins (seed 000's contract-driven example) may set up
            # capabilities in any order or skip some: give every facility its default first
            for name, build in plan.facility_builders:
                if not hasattr(self, name):
                    setattr(self, name, build(self))
            mode = plan.init_mode
            if mode == "contract":  # seed 000's _initialize_mixins(self, contract)
                if capability_config:
                    raise ConfigurationError(
                        f"{cls.__qualname__}._initialize_mixins(self, contract) takes no "
                        "capability_config, so capability_config= would be ignored. Either "
                        "configure through the contract, or give the override a "
                        "`capability_config=None` parameter and pass it on to "
                        "super()._initialize_mixins(contract, capability_config).")
                self._initialize_mixins(contract)  # type: ignore[call-arg]
                return
            if mode == "keyword":
                self._initialize_mixins(contract, capability_config=capability_config)
                return
        self._initialize_mixins(contract, capability_config)

    def _initialize_mixins(self, contract: Any = None,
                           capability_config: Mapping[str, Any] | None = None) -> None:
        """Run each capability's setup hook once, in dependency order, with its configuration.

        Idempotent: calling it again with the same contract (as seed 000's ``__init__`` does
        after ``super().__init__(contract)``) does nothing; a different contract or an explicit
        ``capability_config`` reconfigures.
        """
        # Attributes are read and written with getattr/setattr, never through self.__dict__:
        # touching __dict__ makes CPython 3.11 materialise the instance dict, and every later
        # attribute read on this node (self.cache, self.metrics) takes a slower path (~2x).
        prev = self._onex_init
        if prev is not None and prev[0] is contract and capability_config is None:
            return
        plan = type(self).__onex_plan__
        if prev is not None:
            self._onex_chain = None  # guards are rebound to the reconfigured facilities
        if contract is None and not capability_config:
            if plan.key_checks:
                _check_keys(type(self), plan, plan.defaults)
            for _name, setup, default in plan.setups:
                setup(self, default)
            sources = None
            unset = plan.unset_by_default_setup
            if unset is None:  # first default instance of this class: learn which are left unset
                unset = plan.unset_by_default_setup = tuple(
                    (n, b) for n, b in plan.facility_builders if not hasattr(self, n))
                # later default instances take the inlined path in __init__, unless the class
                # overrides _initialize_mixins (then it must run)
                cls = type(self)
                plan.default_fast = (cls._initialize_mixins is NodeCoreBase._initialize_mixins
                                     and not plan.key_checks)
                if plan.default_fast and cls.__init__ is NodeCoreBase.__init__:
                    _install_fast_init(cls, plan)
            for name, build in unset:
                if not hasattr(self, name):
                    setattr(self, name, build(self))
        else:
            configs, sources = _configs(type(self), plan, contract, capability_config)
            if plan.key_checks:
                _check_keys(type(self), plan, configs)
            for name, setup, _default in plan.setups:
                setup(self, configs[name])
            for name, build in plan.facility_builders:
                if not hasattr(self, name):  # a capability without setup, or one that left it unset
                    setattr(self, name, build(self))
        self._onex_init = (contract, capability_config, sources)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open every capability's resources in dependency order (idempotent).

        If one fails, those already started are closed again (in reverse) before the error
        propagates. Concurrent calls share one start: the others wait for it.
        """
        if self._onex_started:
            return
        loop = asyncio.get_running_loop()
        pending = self._onex_starting
        if pending is not None and not pending.done() and pending.get_loop() is loop:
            await asyncio.shield(pending)
            if not self._onex_started:
                raise OnexError(f"{type(self).__qualname__}.start() failed in a concurrent call; "
                                "see that call's error")
            return
        self._onex_starting = loop.create_future()
        started: list[tuple[str, str | None]] = []
        plan = type(self).__onex_plan__
        try:
            for name, hook in plan.starts:
                await getattr(self, hook)()
                started.append((name, plan.close_of.get(name)))
        except BaseException:
            for _name, close in reversed(started):
                if close:
                    try:
                        await getattr(self, close)()
                    except Exception as exc:  # keep the original error
                        from onex_compose.capabilities._log import logger

                        logger.opt(exception=exc).warning("close after failed start: {}", exc)
            raise
        else:
            self._onex_started = True
            self._onex_closed = False
        finally:
            done, self._onex_starting = self._onex_starting, None
            if done is not None and not done.done():
                done.set_result(None)

    async def aclose(self) -> None:
        """Close every capability's resources in reverse dependency order (idempotent).

        A ``start()`` still running is waited for first, so nothing it opens stays open. Every
        close hook runs even if an earlier one fails; the first failure is re-raised after all
        of them ran.
        """
        pending = self._onex_starting
        if pending is not None and not pending.done():
            try:
                if pending.get_loop() is asyncio.get_running_loop():
                    await asyncio.shield(pending)
            except RuntimeError:
                pass
        if self._onex_closed:
            return
        self._onex_closed = True
        self._onex_started = False
        first: BaseException | None = None
        for name, hook in type(self).__onex_plan__.closes:
            try:
                await getattr(self, hook)()
            except Exception as exc:
                from onex_compose.capabilities._log import logger

                logger.opt(exception=exc).warning("capability {} failed to close: {}", name, exc)
                first = first or exc
        if first is not None:
            raise first

    async def __aenter__(self) -> NodeCoreBase:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def process(self, input_data: Any) -> Any:
        """The node's operation. Subclasses define it; guard capabilities wrap it."""
        raise NotImplementedError(
            f"{type(self).__qualname__} does not define process(input_data); subclass it and "
            "define the node's operation there.")

    # -- operations endpoint ------------------------------------------------------------------

    def ops_app(self) -> Any:
        """This node's operations endpoint: an ASGI app serving ``/metrics`` and the probes.

        ``GET /metrics`` (Prometheus text, or OpenMetrics when ``Accept`` asks for it),
        ``GET /livez``, ``/readyz``, ``/startupz`` (200 or 503 with a JSON body naming what
        fails) and ``GET /debug/profile`` when the node composes ``profiling``. Mount it in
        Starlette or FastAPI, or let ``node_service`` serve it (``ops_port``). See
        :func:`onex_compose.ops_app` for several nodes in one scrape.

        Example:
            >>> from onex_compose import NodeCompute
            >>> NodeCompute(node_id="n").ops_app().probe("readyz")[1]["failing"]
            ['n: started']
        """
        from onex_compose._ops import ops_app

        return ops_app(self)

    # -- pickling -----------------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        cls = type(self)
        comp = vars(cls).get("__composition__")
        token: Any
        if (isinstance(comp, Composition) and comp.style == "composed"
                and cls.__module__ == COMPOSED_MODULE):  # built by compose(), not a subclass
            token = ("composed", comp.base, cls.__qualname__)
        else:
            token = cls
        init = self._onex_init or (getattr(self, "contract", None), None, None)
        node_id = getattr(self, "node_id", None)
        # what the capabilities own is rebuilt from config on unpickling, so it is left out: the
        # attributes a fresh node with the same configuration has (pickling is rare; this keeps
        # the init path free of bookkeeping)
        fresh = _rebuild(token, init[0], init[1], node_id)
        skip = set(vars(fresh)) | _BOOKKEEPING
        state = {k: v for k, v in vars(self).items() if k not in skip}
        return (_rebuild, (token, init[0], init[1], node_id), state)

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        cls = type(self)
        name = cls.__name__ if cls.__module__ == COMPOSED_MODULE else cls.__qualname__
        return f"<{name} node_id={getattr(self, 'node_id', None)!r}>"


def _rebuild(token: Any, contract: Any, capability_config: Any, node_id: str | None) -> Any:
    cls: Any
    if isinstance(token, tuple) and token[0] == "composed":
        _register_base(token[1])
        cls = lookup_composed(token[2])
    else:
        cls = token
    obj: Any = cls.__new__(cls)
    NodeCoreBase.__init__(obj, contract, capability_config=capability_config, node_id=node_id)
    return obj


def _check_keys(cls: type, plan: _Plan, configs: Mapping[str, Any]) -> None:
    """Fail secure, all at once: before any setup runs, ask every capability config that can
    tell (a ``missing_keys()`` method returning one line per missing key, saying how to provide
    it) and raise one :class:`ConfigurationError` naming every missing key, rather than the
    first setup's error only."""
    problems: list[str] = []
    for name in plan.key_checks:
        problems += [f"{name}: {line}" for line in configs[name].missing_keys()]
    if problems:
        raise ConfigurationError(
            f"{cls.__name__} cannot be set up: {len(problems)} key"
            f"{'s are' if len(problems) > 1 else ' is'} missing (provide "
            f"{'each' if len(problems) > 1 else 'it'}, then build the node again):",
            problems=problems)


def _configs(cls: type, plan: _Plan, contract: Any,
             capability_config: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, str]]:
    if capability_config is not None and not isinstance(capability_config, Mapping):
        raise ConfigurationError(
            f"capability_config= takes a mapping of capability name to its configuration, got "
            f"{capability_config!r}. Example: capability_config={{'caching': {{'max_entries': 100}}}}.")
    if contract is not None:
        check_contract(contract, cls.__qualname__,
                       None if cls.node_type is None else str(cls.node_type))  # type: ignore[attr-defined]
        listed = contract_capabilities(contract)
        keys = set(plan.specs) | {s.config_key for s in plan.specs.values()}
        stray = [k for k in listed or () if k not in keys]
        if stray:
            raise ConfigurationError(
                f"The contract configures capabilities {cls.__qualname__} does not have:",
                problems=[f"{k!r}{did_you_mean(k, sorted(keys))}; its capabilities: "
                          f"{', '.join(plan.names)}" for k in stray])
    explicit = dict(capability_config or {})
    problems = []
    for key in list(explicit):
        if key not in plan.specs:
            by_key = [n for n, s in plan.specs.items() if s.config_key == key]
            if by_key:
                explicit[by_key[0]] = explicit.pop(key)
                continue
            problems.append(
                f"{key!r}: {cls.__qualname__} has no capability {key!r}"
                f"{did_you_mean(key, plan.specs)}; its capabilities: {', '.join(plan.names)}")
    if problems:
        raise ConfigurationError("capability_config= names capabilities this node does not have:",
                                 problems=problems)
    configs: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, spec in plan.specs.items():
        found = contract_config(contract, name, spec.config_key)
        if name in explicit:
            if found is None:
                configs[name] = coerce_config(spec.config_model, explicit[name], name)
                sources[name] = _describe_source("capability_config", configs[name])
                continue
            # explicit values win field by field; the contract's other fields stay
            configs[name] = overlay_config(spec.config_model, found[0], explicit[name], name)
            override = coerce_config(spec.config_model, explicit[name], name)
            from_contract = coerce_config(spec.config_model, found[0], name)
            sources[name] = _describe_sources(configs[name], [
                ("capability_config", getattr(override, "model_fields_set", set())),
                (found[1], getattr(from_contract, "model_fields_set", set()))])
            continue
        if found is not None:
            configs[name] = coerce_config(spec.config_model, found[0], name)
            sources[name] = _describe_source(found[1], configs[name])
        else:
            configs[name] = plan.defaults[name]
            sources[name] = "defaults"
    return configs, sources


def _describe_sources(config: Any, layers: list[tuple[str, set[str]]]) -> str:
    """Field sources of a layered configuration: the first layer that set a field wins."""
    fields = list(getattr(type(config), "model_fields", {}))
    taken: set[str] = set()
    parts = []
    for source, fields_set in layers:
        mine = [f for f in fields if f in fields_set and f not in taken]
        taken.update(mine)
        if mine:
            parts.append(f"{source} ({', '.join(mine)})")
    rest = [f for f in fields if f not in taken]
    if rest:
        parts.append(f"defaults ({', '.join(rest)})")
    return "; ".join(parts)


def _describe_source(source: str, config: Any) -> str:
    """``"capability_config (size); defaults (label)"``: which fields came from where."""
    fields = getattr(type(config), "model_fields", None)
    explicit = getattr(config, "model_fields_set", None)
    if fields is None or explicit is None:
        return source
    given = [f for f in fields if f in explicit]
    rest = [f for f in fields if f not in explicit]
    parts = [f"{source} ({', '.join(given)})" if given else source]
    if rest:
        parts.append(f"defaults ({', '.join(rest)})")
    return "; ".join(parts)


register_node_base(NodeCoreBase)

NodeService = NodeCoreBase
"""Seed 000's name for the base of every node service (``Type[NodeService]``)."""


class NodeCompute(NodeCoreBase):
    """A COMPUTE node: pure transformation of its input."""

    node_type = EnumNodeType.COMPUTE


class NodeEffect(NodeCoreBase):
    """An EFFECT node: talks to the outside world (I/O, side effects)."""

    node_type = EnumNodeType.EFFECT


class NodeReducer(NodeCoreBase):
    """A REDUCER node: folds inputs into state."""

    node_type = EnumNodeType.REDUCER


class NodeOrchestrator(NodeCoreBase):
    """An ORCHESTRATOR node: coordinates other nodes."""

    node_type = EnumNodeType.ORCHESTRATOR
