"""The builder: ``compose()``, its class cache, the MRO check, and hand-written class checks.

``compose(base, names)`` is meant for import and start-up time, but a warm call is cheap anyway:
an order-sensitive front cache keyed by ``(base, tuple(names))`` answers repeats with one tuple
build and one dict lookup; a miss resolves the request (networkx, in :mod:`._resolve`), looks the
*resolved* set up in the canonical cache keyed by ``(base, frozenset(resolved), options)``, and
only builds a class with ``type()`` when that misses too. Classes are published with
``dict.setdefault`` under a lock, so concurrent composes of one request get one class, and only
the published class is indexed by name (pickle's lookup). Both caches are stored on the base
class itself, so they hold bases (and their composed classes) no longer than the base lives.

The front cache is written by hand rather than with ``functools.lru_cache`` because the key must
be built from a list argument (unhashable) and kwargs, and a hit must cost no more than a dict
lookup: ``benchmarks/bench_compose.py`` measures it against a frozenset-key floor.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

import attrs

from onex_compose._registry import CapabilitySpec, Registry, default_registry
from onex_compose._resolve import Options, Resolution, resolve
from onex_compose.exceptions import (
    CompositionError,
    ConfigurationError,
    MROError,
    RegistrationError,
    did_you_mean,
)

__all__ = ["Composition", "cache_clear", "cache_info", "compose", "has_capability"]

B = TypeVar("B", bound=type)
COMPOSED_MODULE = "onex_compose._composed"


@attrs.frozen(repr=False)
class Composition:
    """The ``__composition__`` record of a composed or hand-written class.

    Attributes:
        base: the class the capabilities were added to.
        capabilities: every capability of the class, in resolved order (dependencies first).
        required_by: for each capability, the capabilities that require it.
        providers: each public name a capability supplies, and which one.
        overrides: names supplied by one capability that another (or the base) also defines.
        options: the structural resolutions (``prefer``/``exclude``/``alias``).
        style: ``"composed"`` (built by :func:`compose`) or ``"hand-written"``.
        added: capabilities the engine added to a hand-written class to satisfy dependencies.
        edges: the ordering edges ``(before, after, constraint)``.
        specs: the capability specs, in order.
    """

    base: type
    capabilities: tuple[str, ...]
    required_by: Mapping[str, tuple[str, ...]]
    providers: Mapping[str, str]
    overrides: Mapping[str, tuple[str, ...]]
    options: Options
    style: str
    added: tuple[str, ...] = ()
    edges: tuple[tuple[str, str, str], ...] = ()
    specs: tuple[CapabilitySpec, ...] = attrs.field(default=(), eq=False)
    registry: Registry = attrs.field(default=default_registry, eq=False)

    @property
    def resolutions(self) -> list[str]:
        """Applied resolutions, one human line each."""
        return self.options.describe()

    def spec(self, name: str) -> CapabilitySpec:
        """The spec of one of this class's capabilities."""
        for s in self.specs:
            if s.name == name:
                return s
        raise KeyError(name)

    def __repr__(self) -> str:
        return (f"<Composition {self.base.__qualname__} + [{', '.join(self.capabilities)}] "
                f"({self.style})>")


# ---------------------------------------------------------------------------------------------
# the cache

# Both caches live on the base class itself, in two dicts of its own (``__onex_front__`` and
# ``__onex_canon__``, created on its first compose), never in a module-level table: a composed
# class holds its base strongly (its MRO), so a global table holding composed classes would keep
# every base alive forever. On the base, base -> cache -> composed class -> base is a cycle the
# garbage collector frees once nothing else holds the base, while a live base (NodeCompute, a
# user's node class) keeps its composed classes cached. The front key starts with the base
# itself, so a subclass that has no dicts yet misses its parent's (inherited) ones.
_FRONT = "__onex_front__"
_CANON = "__onex_canon__"
_cached_bases: weakref.WeakSet[type] = weakref.WeakSet()
_lock = threading.RLock()
_stats = {"hits": 0, "misses": 0, "builds": 0}
_OPTION_NAMES = ("prefer", "exclude", "alias", "registry")
_bases_by_name: dict[str, weakref.WeakSet[type]] = {}
_by_qualname: weakref.WeakValueDictionary[str, type] = weakref.WeakValueDictionary()


def _caches(base: type) -> tuple[dict[Any, type], dict[Any, type]]:
    """The base's own front and canonical caches (created on its first compose)."""
    own = vars(base)
    front, canon = own.get(_FRONT), own.get(_CANON)
    if front is None or canon is None:
        with _lock:
            own = vars(base)
            front, canon = own.get(_FRONT), own.get(_CANON)
            if front is None or canon is None:
                front, canon = {}, {}
                type.__setattr__(base, _CANON, canon)
                type.__setattr__(base, _FRONT, front)
                _cached_bases.add(base)
    return front, canon


def _all_caches() -> list[tuple[dict[Any, type], dict[Any, type]]]:
    return [(vars(b)[_FRONT], vars(b)[_CANON]) for b in list(_cached_bases)]


def _on_registry_change(changed: frozenset[str]) -> None:
    with _lock:
        for front, canon in _all_caches():
            front.clear()
            if changed:
                for key in [k for k in canon if k[1] & changed]:
                    stale = canon.pop(key)
                    for q in [q for q, c in _by_qualname.items() if c is stale]:
                        del _by_qualname[q]


default_registry.on_change(_on_registry_change)
_watched: weakref.WeakSet[Registry] = weakref.WeakSet([default_registry])


def cache_info() -> dict[str, int]:
    """Counts of the composition cache: ``classes``, ``front_entries``, ``hits``, ``misses``, ``builds``.

    ``hits`` counts only requests answered by the canonical cache after a front-cache miss; the
    front-cache hit path is kept free of bookkeeping.
    """
    caches = _all_caches()
    return {"classes": sum(len(c) for _f, c in caches),
            "front_entries": sum(len(f) for f, _c in caches), **_stats}


def cache_clear() -> None:
    """Forget every composed class (new requests build new classes)."""
    with _lock:
        for front, canon in _all_caches():
            front.clear()
            canon.clear()
        _by_qualname.clear()
        for k in _stats:
            _stats[k] = 0


def compose(base: B, capabilities: Sequence[str], /, **options: Any) -> B:
    """Build (or fetch from the cache) ``base`` extended with the named capabilities.

    Args:
        base: the node class to extend, e.g. ``NodeCompute``.
        capabilities: capability names, aliases or bundles, in any order; repeats are ignored.
        **options: structural resolutions: ``prefer={"member": "capability"}``,
            ``exclude=["capability", "capability.member"]``, ``alias={"cap.member": "new"}``,
            and ``registry=`` a private :class:`Registry`.

    Returns:
        The composed class. One resolved set of capabilities on one base is one class object.

    Raises:
        CompositionError: every problem of the request at once (unknown names, cycles,
            conflicts, node-type applicability, layout problems).

    Example:
        >>> from onex_compose import NodeCompute, compose
        >>> Service = compose(NodeCompute, ["caching", "metrics"])
        >>> Service.__name__
        'NodeCompute[caching,metrics]'
        >>> compose(NodeCompute, ["metrics", "caching", "caching"]) is Service
        True
    """
    if options:
        return cast(B, _compose_with_options(base, capabilities, options))
    try:
        return cast(B, base.__onex_front__[base, tuple(capabilities)])  # type: ignore[attr-defined]
    except (KeyError, AttributeError):
        return cast(B, _compose_cold(base, capabilities, Options(), default_registry,
                                     (base, tuple(capabilities))))
    except TypeError:
        return cast(B, _compose_cold(base, capabilities, Options(), default_registry, None))


_NO_OPTIONS = Options()


def _compose_with_options(base: type, capabilities: Sequence[str], options: dict[str, Any]) -> type:
    if len(options) == 1 and "registry" in options:  # the common plugin/test spelling: stay warm
        try:
            return base.__onex_front__[  # type: ignore[attr-defined, no-any-return]
                base, tuple(capabilities), _NO_OPTIONS, options["registry"]]
        except (KeyError, TypeError, AttributeError):
            pass
    unknown = [k for k in options if k not in _OPTION_NAMES]
    if unknown:
        raise ConfigurationError(
            f"compose() got unknown option {unknown[0]!r}"
            f"{did_you_mean(unknown[0], _OPTION_NAMES)}. Options are structural: "
            f"{', '.join(_OPTION_NAMES)}. Per-instance settings go in capability_config= "
            "or the node contract.")
    registry = options.get("registry")
    if registry is None:
        registry = default_registry
    if not isinstance(registry, Registry):
        raise ConfigurationError(f"registry= must be a Registry, got {registry!r}.")
    if registry not in _watched:
        registry.on_change(_on_registry_change)
        _watched.add(registry)
    opts = (_NO_OPTIONS if len(options) == 1 and "registry" in options else
            Options.make(options.get("prefer"), options.get("exclude"), options.get("alias")))
    try:
        # the registry object itself, never id(): a collected registry's id can be reused
        key: Any = (base, tuple(capabilities), opts, registry)
        return base.__onex_front__[key]  # type: ignore[attr-defined, no-any-return]
    except (KeyError, AttributeError):
        return _compose_cold(base, capabilities, opts, registry, key)
    except TypeError:
        return _compose_cold(base, capabilities, opts, registry, None)


def _check_request(base: Any, capabilities: Any) -> list[str]:
    if not isinstance(base, type) or not issubclass(base, _node_base()):
        raise ConfigurationError(
            "compose() takes a node class as its base (a NodeCoreBase subclass: NodeCompute, "
            "NodeEffect, NodeReducer, NodeOrchestrator, a *Service class, or a subclass of one), "
            f"got {base!r}: "
            "capabilities are set up by the node base. Example: compose(NodeCompute, ['caching']).")
    if isinstance(capabilities, str):
        raise ConfigurationError(
            f"compose() takes a list of capability names, got the string {capabilities!r}. "
            f"Write compose({base.__qualname__}, [{capabilities!r}]).")
    try:
        names = list(capabilities)
    except TypeError:
        raise ConfigurationError(
            f"compose() takes a list of capability names, got {capabilities!r}.") from None
    return names


def _node_base() -> type:
    return _NODE_BASE


class _NoNodeBase:
    """Stands in until the node base registers itself (nothing is a subclass of it)."""


# The builder sits below the node base: ``_nodes`` imports this module and hands it its base
# class (``register_node_base``), so the engine's imports read one way (_build <- _nodes <-
# _services), and the builder never imports the node modules, not even lazily.
_NODE_BASE: type = _NoNodeBase


def register_node_base(cls: type) -> None:
    """Make ``cls`` the class every ``compose()`` base must subclass (called by ``_nodes``)."""
    global _NODE_BASE
    _NODE_BASE = cls
    _register_base(cls)


def node_type_of(base: type) -> str | None:
    """The node type string of a base class (``None`` when it has none)."""
    nt = getattr(base, "node_type", None)
    if nt is None:
        return None
    return str(getattr(nt, "value", nt))


def _base_specs(base: type) -> tuple[CapabilitySpec, ...]:
    comp = getattr(base, "__composition__", None)
    return comp.specs if isinstance(comp, Composition) else ()


def _compose_cold(base: type, capabilities: Sequence[str], opts: Options, registry: Registry,
                  front_key: Any) -> type:
    names = _check_request(base, capabilities)
    fixed_specs = _base_specs(base)
    fixed = tuple(s.name for s in fixed_specs)
    res = resolve(registry, base, names, opts, node_type=node_type_of(base), fixed=fixed_specs)
    if res.excluded != opts.exclude:  # an exclude that changes nothing is not part of the class
        opts = attrs.evolve(opts, exclude=res.excluded)
    canon_key = (base, frozenset(res.names), opts, registry)
    front, canon = _caches(base)
    with _lock:
        cls = canon.get(canon_key)
        if cls is not None:
            _stats["hits"] += 1
    if cls is None:
        _stats["misses"] += 1
        built = _build(base, res, opts, registry, fixed)
        with _lock:
            cls = canon.setdefault(canon_key, built)
            if cls is built:
                _stats["builds"] += 1
                # index only the published class: a thread that lost the race built a twin
                # that must never be what pickle finds by name
                _by_qualname[cls.__qualname__] = cls
    if front_key is not None:
        with _lock:
            front[front_key] = cls
    return cls


# ---------------------------------------------------------------------------------------------
# building


class _Hidden:
    """Stands in for a member hidden by ``exclude=`` (attribute access raises AttributeError)."""

    def __init__(self, member: str, capability: str) -> None:
        self.member, self.capability = member, capability

    def __set_name__(self, owner: type, name: str) -> None:
        self.owner = owner.__qualname__

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        raise AttributeError(
            f"{self.member!r} of capability {self.capability!r} was excluded from "
            f"{getattr(self, 'owner', '?')} by exclude=['{self.capability}.{self.member}'].")


def _raw(mixin: type, member: str) -> Any:
    for klass in mixin.__mro__:
        if member in vars(klass):
            return vars(klass)[member]
    raise AttributeError(member)


def class_name(base: type, names: Iterable[str], opts: Options,
               registry: Registry = default_registry) -> str:
    """The qualified name of a composed class: ``NodeCompute[caching,metrics]``.

    The name alone is enough to recompose the class (pickle looks classes up by name, reading
    dots as an attribute path), so: options add ``|prefer:...`` parts; a base from outside
    onex_compose adds ``@its:module`` (dots written as colons, a nested base's qualname too);
    a private registry adds ``~module~name``. ``__name__`` keeps only the readable part.
    """
    head = base.__qualname__.replace(".", ":")
    module = "" if base.__module__.startswith("onex_compose") else (
        "@" + base.__module__.replace(".", ":"))
    return f"{head}[{','.join(sorted(names))}]{opts.suffix()}{module}{registry.token}"


def readable_name(qualname: str) -> str:
    """``Outer:Inner[caps]@mod~reg`` -> ``Outer.Inner[caps]`` (the class's ``__name__``)."""
    head, sep, rest = qualname.partition("[")
    return head.replace(":", ".") + sep + rest.partition("@")[0].partition("~")[0]


def _build(base: type, res: Resolution, opts: Options, registry: Registry,
           fixed: Sequence[str]) -> type:
    new_specs = [s for s in res.specs if s.name not in fixed]
    mixins = [s.mixin for s in new_specs]
    bases = (base, *mixins)
    name = class_name(base, res.names, opts, registry)
    _precheck_layout(base, new_specs, bases, res.names)
    record = Composition(
        base=base, capabilities=res.names, required_by=res.required_by,
        providers=res.providers, overrides=res.overrides, options=opts, style="composed",
        edges=res.edges, specs=res.specs, registry=registry,
    )
    ns: dict[str, Any] = {
        "__module__": COMPOSED_MODULE,
        "__qualname__": name,
        "__composition__": record,
        "__doc__": f"{base.__qualname__} composed with {', '.join(res.names) or 'no capabilities'}"
                   f" (see onex_compose.explain).",
    }
    ns.update(_resolution_members(res, opts))
    try:
        cls = type(readable_name(name), bases, ns)
    except TypeError as exc:
        raise MROError(base, list(res.names), bases, str(exc)) from exc
    _check_mro(cls, base, mixins, res.names)
    _register_base(base)
    return cls


def _resolution_members(res: Resolution, opts: Options) -> dict[str, Any]:
    ns: dict[str, Any] = {}
    by_name = {s.name: s for s in res.specs}
    for member, cap in opts.prefer:
        ns[member] = _raw(by_name[cap].mixin, member)
    for cap, member in opts.exclude_members:
        owner = res.providers.get(member)
        ns[member] = _raw(by_name[owner].mixin, member) if owner else _Hidden(member, cap)
    for cap, member, new in opts.alias:
        ns[new] = _raw(by_name[cap].mixin, member)
        if member not in ns:
            owner = res.providers.get(member)
            ns[member] = _raw(by_name[owner].mixin, member) if owner else _Hidden(member, cap)
    return ns


def _precheck_layout(base: type, specs: Sequence[CapabilitySpec], bases: tuple[type, ...],
                     names: Sequence[str]) -> None:
    """Report layout problems by capability before ``type()`` runs (a mixin inheriting another
    selected mixin, or a base that already inherits one under another name).

    Metaclasses and ``__slots__`` of every mixin were checked at registration (plain ``type``,
    empty slots, no built-in layout), so only the base can bring a metaclass, and every mixin
    is compatible with it.
    """
    owner = {s.mixin: s for s in specs}
    for spec in specs:
        for klass in spec.mixin.__mro__[1:-1]:
            other = owner.get(klass)
            if other is not None:
                raise MROError(
                    base, list(names), bases,
                    f"{spec.mixin.__qualname__} ({spec.name!r}) already subclasses "
                    f"{klass.__qualname__} ({other.name!r}), so the two cannot both be listed "
                    f"as bases; make {spec.name!r} a separate mixin that requires {other.name!r} "
                    "instead of inheriting from its mixin")
    already = [s.name for k, s in owner.items() if k in base.__mro__]
    if already:
        raise MROError(base, list(names), bases,
                       f"the base already inherits the mixin of {already} under another name")


def _check_mro(cls: type, base: type, mixins: Sequence[type], names: Sequence[str]) -> None:
    mro = cls.__mro__
    if len(set(mro)) != len(mro):
        raise MROError(base, list(names), cls.__bases__, "the MRO lists a class twice")
    if mro[1] is not base:
        raise MROError(base, list(names), cls.__bases__,
                       f"the base is not first after the class (found {mro[1].__qualname__})")
    positions = [mro.index(m) for m in mixins]
    if positions != sorted(positions):
        raise MROError(base, list(names), cls.__bases__,
                       "the MRO does not keep the resolved capability order; a mixin probably "
                       "subclasses another mixin, list it only once")


def _register_base(base: type) -> None:
    """Remember a base class by qualname (weakly) so composed class names can be looked up."""
    comp = vars(base).get("__composition__")
    if isinstance(comp, Composition) and comp.style == "composed":
        return  # composed classes are found through the cache, not as bases
    _bases_by_name.setdefault(base.__qualname__, weakref.WeakSet()).add(base)


def lookup_composed(qualname: str) -> type:
    """Recompose a class from its readable name (pickle finds composed classes this way)."""
    known = _by_qualname.get(qualname)
    if known is not None:
        return known
    head, sep, rest = qualname.partition("[")
    if not sep or "]" not in rest:
        raise AttributeError(f"module {COMPOSED_MODULE!r} has no attribute {qualname!r}")
    caps_text, _, suffix = rest.partition("]")
    registry = default_registry
    if "~" in suffix:
        suffix, _, reg_text = suffix.partition("~")
        home, _, reg_name = reg_text.partition("~")
        from onex_compose._registry import _registry_lookup

        registry = _registry_lookup(home.replace(":", "."), reg_name)
    suffix, at, module_text = suffix.partition("@")
    head = head.replace(":", ".")
    if at:  # a base from outside onex_compose: import its module and walk its qualname
        import importlib

        obj: Any = importlib.import_module(module_text.replace(":", "."))
        for part in head.split("."):
            obj = getattr(obj, part)
        candidates: list[Any] = [obj]
    else:  # every node class registers itself when it is created (the node base included)
        candidates = list(_bases_by_name.get(head, ()))
    if len(candidates) != 1:
        raise AttributeError(
            f"cannot recompose {qualname!r}: base {head!r} is "
            + ("not imported in this process; import its module first" if not candidates
               else f"ambiguous ({[c.__module__ for c in candidates]})"))
    caps = [c for c in caps_text.split(",") if c]
    opts = Options.parse_suffix(suffix)
    kwargs: dict[str, Any] = {}
    if registry is not default_registry:
        kwargs["registry"] = registry
    if opts.prefer:
        kwargs["prefer"] = dict(opts.prefer)
    if opts.exclude or opts.exclude_members:
        kwargs["exclude"] = [*opts.exclude, *(f"{c}.{m}" for c, m in opts.exclude_members)]
    if opts.alias:
        kwargs["alias"] = {f"{c}.{m}": n for c, m, n in opts.alias}
    base: type = candidates[0]
    return compose(base, caps, **kwargs)


# ---------------------------------------------------------------------------------------------
# hand-written classes


def own_capabilities(cls: type) -> list[str]:
    """Capability names of the mixins found in a class's MRO, in MRO order."""
    return [vars(k)["__onex_capability__"] for k in cls.__mro__
            if "__onex_capability__" in vars(k)]


def check_class(cls: type) -> Composition:
    """Check a hand-written class (called at class creation) and return its composition record.

    Missing dependencies are added as extra bases (and listed in ``added``); conflicts and
    node-type problems raise at class creation, naming the class.
    """
    inherited = next((c.registry for b in cls.__mro__[1:]
                      if isinstance(c := vars(b).get("__composition__"), Composition)
                      and c.capabilities), None)
    registry: Registry = next((r for r in (getattr(cls, "__onex_registry__", None), inherited)
                               if r is not None), default_registry)
    names = own_capabilities(cls)
    mismatched = []
    for klass in cls.__mro__:
        cap = vars(klass).get("__onex_capability__")
        if cap is None or cap not in registry:
            continue
        registered = registry.get(cap).mixin_ref
        if registered != f"{klass.__module__}:{klass.__qualname__}":
            mismatched.append(RegistrationError(
                f"In class {cls.__module__}.{cls.__qualname__}: base {klass.__qualname__} declares "
                f"capability {cap!r}, but registry {registry.name!r} maps {cap!r} to {registered}. "
                f"Use the registry's mixin, or set __onex_registry__ to the registry that has "
                f"{klass.__qualname__}.", name=cap))
    if mismatched:
        raise CompositionError.collect(mismatched)
    parent = next((getattr(b, "__composition__", None) for b in cls.__bases__
                   if isinstance(getattr(b, "__composition__", None), Composition)), None)
    if parent is not None and set(names) == set(parent.capabilities) and not any(
            "__onex_capability__" in vars(b) for b in cls.__bases__):
        return cast(Composition, parent)
    try:
        res = resolve(registry, cls, names, Options(), node_type=node_type_of(cls),
                      skip=cls)
    except CompositionError as exc:
        raise _reword(cls, exc) from None
    added = tuple(n for n in res.names if n not in names)
    if added:
        extra = tuple(s.mixin for s in res.specs if s.name in added)
        try:
            cls.__bases__ = cls.__bases__ + extra
        except TypeError as exc:
            raise MROError(cls, list(res.names), cls.__bases__ + extra,
                           f"adding the missing dependencies {list(added)} failed: {exc}") from exc
    mro = cls.__mro__
    if len(set(mro)) != len(mro):
        raise MROError(cls, list(res.names), cls.__bases__, "the MRO lists a class twice")
    for spec in res.specs:
        if not issubclass(cls, spec.mixin):
            raise MROError(cls, list(res.names), cls.__bases__,
                           f"capability {spec.name!r} resolved but its mixin is not a base")
    return Composition(
        base=cls, capabilities=res.names, required_by=res.required_by, providers=res.providers,
        overrides=res.overrides, options=Options(), style="hand-written", added=added,
        edges=res.edges, specs=res.specs, registry=registry)


def _reword(cls: type, exc: CompositionError) -> CompositionError:
    exc.message = f"In class {cls.__module__}.{cls.__qualname__}: {exc.message}"
    exc.args = (exc.message,)
    return exc


def has_capability(obj_or_cls: Any, name: str) -> bool:
    """Whether a class (or an instance's class) has a capability (aliases and bundles accepted).

    Example:
        >>> from onex_compose import NodeCompute, compose, has_capability
        >>> has_capability(compose(NodeCompute, ["caching"]), "metrics")
        True
    """
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    comp = getattr(cls, "__composition__", None)
    if not isinstance(comp, Composition):
        return False
    if name in comp.capabilities:
        return True
    targets = comp.registry.aliases.get(name)
    if targets:
        expanded, _ = comp.registry.expand([name])
        return all(t in comp.capabilities for t in expanded)
    return False
