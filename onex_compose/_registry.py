"""The capability registry: specs, registration, aliases and bundles, lazy loading.

A :class:`CapabilitySpec` is a frozen record of everything the resolver and builder need to know
about one capability. The mixin class and config model are referenced as ``"module:Name"``
strings and imported only when a composition actually uses the capability, so reading metadata
(``"caching" in registry``, ``onex list``) never imports capability modules or parses YAML: the
built-in capabilities are described by a generated manifest (``capabilities/_manifest.json``),
which a test regenerates from the YAML contracts and compares.

Third-party packages add capabilities through the entry-point group
``onex_compose.capabilities``; an entry point may load to a manifest mapping, to a mixin class
decorated with :func:`capability`, or to a callable taking the registry. Entry points are scanned
lazily: only when a name is not found, or when the whole registry is listed.
"""

from __future__ import annotations

import importlib
import inspect
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar, overload

import attrs

from onex_compose.exceptions import (
    MixinDefinitionError,
    RegistrationError,
    UnknownCapabilityError,
)

__all__ = [
    "ALL_NODE_TYPES",
    "ENTRY_POINT_GROUP",
    "CapabilitySpec",
    "Registry",
    "capability",
    "default_registry",
]

ENTRY_POINT_GROUP = "onex_compose.capabilities"
ALL_NODE_TYPES: frozenset[str] = frozenset({"COMPUTE", "EFFECT", "REDUCER", "ORCHESTRATOR"})
DEFAULT_RANK = 500
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: classes created by a class statement or type()

T = TypeVar("T", bound=type)


def _names(value: Iterable[str] | str | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(value)


def _protocols(value: Iterable[str] | str | None) -> frozenset[str]:
    return frozenset(protocol_key(p) for p in _names(value))


def _ref_of(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _import_ref(ref: str) -> Any:
    module, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def protocol_key(name: str) -> str:
    """Normalise a protocol name: ``CachingProtocol`` and ``caching_protocol`` are one protocol.

    Example:
        >>> protocol_key("CachingProtocol")
        'caching_protocol'
    """
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return snake.replace("__", "_")


@attrs.frozen(repr=False)
class CapabilitySpec:
    """Everything the engine knows about one capability (a frozen record).

    Args:
        name: canonical capability name (``"caching"``), lowercase identifier.
        mixin_ref: ``"module:QualName"`` of the mixin class (imported lazily).
        requires: capabilities pulled in and initialised first.
        optional: order-only dependencies: if present they come first, never pulled in.
        conflicts: capabilities that may not be composed with this one.
        provides: protocols this capability provides (normalised names).
        requires_protocols: protocols this capability needs; each resolves to the one
            registered capability that provides it.
        covers: other capabilities this one stands in for when they are absent (seed 002's
            error_handling "provides circuit_breaker"); never a conflict when they are present.
        applicable_node_types: node types it may be composed on.
        config_ref: ``"module:Model"`` of its Pydantic config model, or ``None``.
        rank: order among unrelated capabilities (lower first); ``before``/``after`` add edges.
        before, after: order-only constraints against other capabilities.
        contract: path of its YAML contract, or ``None``.
        subcontract_key: the key its configuration has in a node contract, when it is not the
            capability's name (seed 000 configures event_bus through ``event_type``).
        setup, start, close: names of its lifecycle hook methods on the mixin.
        guard_rank: position in the guarded ``process()`` pipeline (lower is outer), or
            ``None`` when it does not wrap ``process()``.
        declared_at: ``file:line`` where it was declared, for error messages.
    """

    name: str
    mixin_ref: str
    requires: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    optional: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    conflicts: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    provides: frozenset[str] = attrs.field(default=frozenset(), converter=_protocols)
    requires_protocols: frozenset[str] = attrs.field(default=frozenset(), converter=_protocols)
    covers: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    applicable_node_types: frozenset[str] = attrs.field(default=ALL_NODE_TYPES, converter=_names)
    config_ref: str | None = None
    rank: int = DEFAULT_RANK
    before: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    after: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    contract: str | None = None
    subcontract_key: str | None = None
    setup: str | None = None
    start: str | None = None
    close: str | None = None
    guard_rank: int | None = None
    declared_at: str = "<unknown>"
    # lazily imported objects; not part of equality
    _loaded: dict[str, Any] = attrs.field(factory=dict, eq=False, hash=False, alias="_loaded")

    def __attrs_post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise RegistrationError(
                f"Capability name {self.name!r} is not a lowercase identifier "
                "(letters, digits, underscores; starting with a letter).",
                name=self.name,
            )
        bad = self.applicable_node_types - ALL_NODE_TYPES
        if bad:
            raise RegistrationError(
                f"Capability {self.name!r}: {sorted(bad)} not in "
                f"[COMPUTE, EFFECT, REDUCER, ORCHESTRATOR].",
                name=self.name,
            )

    @property
    def mixin(self) -> type:
        """The mixin class (imported and checked on first use)."""
        try:
            return self._loaded["mixin"]  # type: ignore[no-any-return]
        except KeyError:
            pass
        try:
            mixin = _import_ref(self.mixin_ref)
        except (ImportError, AttributeError) as exc:
            raise RegistrationError(
                f"Capability {self.name!r}: cannot import its mixin {self.mixin_ref!r} "
                f"({exc}). Check the module path in its registration.",
                name=self.name,
            ) from exc
        check_mixin(self.name, mixin)
        self._loaded["mixin"] = mixin
        return mixin  # type: ignore[no-any-return]

    @property
    def config_model(self) -> Any:
        """The Pydantic config model class, or ``None``."""
        if self.config_ref is None:
            return None
        try:
            return self._loaded["config"]
        except KeyError:
            model = _import_ref(self.config_ref)
            self._loaded["config"] = model
            return model

    @property
    def config_key(self) -> str:
        """The key this capability's configuration has in a node contract."""
        return self.subcontract_key or self.name

    @property
    def loaded(self) -> bool:
        """Whether the mixin module has been imported already."""
        return "mixin" in self._loaded

    def __repr__(self) -> str:
        parts = [repr(self.name)]
        if self.requires:
            parts.append(f"requires={sorted(self.requires)}")
        if self.provides:
            parts.append(f"provides={sorted(self.provides)}")
        if self.applicable_node_types != ALL_NODE_TYPES:
            parts.append(f"node_types={sorted(self.applicable_node_types)}")
        parts.append(f"mixin={self.mixin_ref!r}")
        return f"CapabilitySpec({', '.join(parts)})"

    def to_manifest(self) -> dict[str, Any]:
        """The JSON-able manifest entry of this spec."""
        out: dict[str, Any] = {"mixin": self.mixin_ref}
        for field in ("requires", "optional", "conflicts", "provides", "requires_protocols",
                      "covers", "before", "after"):
            value = getattr(self, field)
            if value:
                out[field] = sorted(value)
        if self.applicable_node_types != ALL_NODE_TYPES:
            out["applicable_node_types"] = sorted(self.applicable_node_types)
        for field in ("config_ref", "contract", "subcontract_key", "setup", "start", "close",
                      "guard_rank"):
            value = getattr(self, field)
            if value is not None:
                out[field] = value
        if self.rank != DEFAULT_RANK:
            out["rank"] = self.rank
        return out


def check_mixin(name: str, mixin: Any) -> None:
    """Check the rules every mixin follows; raise :class:`MixinDefinitionError` if broken.

    A mixin defines no ``__init__`` (its state is set up by its setup hook, so no cooperative
    ``__init__`` chain can be broken), declares ``__slots__ = ()`` in its own class body and in
    each of its mixin bases (any set of mixins can share one instance layout, and none adds a
    ``__dict__`` of its own), and brings no metaclass (any set of them can share a class).
    """
    if not isinstance(mixin, type):
        raise RegistrationError(
            f"Capability {name!r}: its mixin must be a class, got {mixin!r}.", name=name
        )
    if type(mixin) is not type:
        raise MixinDefinitionError(
            name, mixin, "brings a metaclass",
            f"{type(mixin).__qualname__}. Mixins must use plain 'type' so any set of them can "
            "share one class; move the metaclass behaviour into the setup hook.",
        )
    for klass in mixin.__mro__[:-1]:
        if not klass.__flags__ & _HEAPTYPE:
            raise MixinDefinitionError(
                name, mixin, "derives from a built-in type with its own instance layout",
                f"{klass.__qualname__}. Two such mixins cannot share a class ('multiple bases "
                "have instance lay-out conflict'); hold the value in an attribute instead.",
            )
        if "__init__" in vars(klass):
            raise MixinDefinitionError(
                name, mixin, "defines __init__",
                f"(in {klass.__qualname__}). Mixins set up their state in their setup hook "
                f"(setup_{name}(self, config)), so that a missing super().__init__() can never "
                "skip another capability. Move the body of __init__ there.",
            )
        if "__slots__" not in vars(klass):
            raise MixinDefinitionError(
                name, mixin, "does not declare __slots__ = ()",
                f"(in {klass.__qualname__}). Every mixin class declares an empty __slots__ in its "
                "own class body so that it adds no instance layout; add the line "
                "'__slots__ = ()' to the class body of "
                f"{klass.__qualname__} and keep state in instance attributes set by the setup "
                "hook.",
            )
        slots = vars(klass)["__slots__"]
        if isinstance(slots, str):
            slots = (slots,)
        if tuple(slots):
            raise MixinDefinitionError(
                name, mixin, "declares non-empty __slots__",
                f"{tuple(slots)!r} in {klass.__qualname__}. Two mixins with slots cannot share an "
                "instance layout ('multiple bases have instance lay-out conflict'); declare "
                "__slots__ = () and keep state in instance attributes set by the setup hook.",
            )


_public_names: weakref.WeakKeyDictionary[type, frozenset[str]] = weakref.WeakKeyDictionary()


def public_names(mixin: type) -> frozenset[str]:
    """The public names a mixin class (and its mixin bases) defines (cached per class)."""
    try:
        return _public_names[mixin]
    except KeyError:
        pass
    names: set[str] = set()
    for klass in mixin.__mro__[:-1]:
        names.update(n for n in vars(klass) if not n.startswith("_"))
        names.update(vars(klass).get("__onex_facilities__", ()))  # attributes declared by facility
    result = _public_names[mixin] = frozenset(names)
    return result


#: names every class has or that the engine itself sets: never a clash between mixins
_STANDARD_PRIVATE = frozenset({
    "__module__", "__qualname__", "__doc__", "__slots__", "__dict__", "__weakref__",
    "__annotations__", "__firstlineno__", "__static_attributes__", "__type_params__",
    "__onex_capability__", "__onex_facilities__", "__orig_bases__", "__parameters__",
    "__abstractmethods__", "_abc_impl", "__protocol_attrs__", "__non_callable_proto_members__",
    "_is_protocol", "_is_runtime_protocol", "__subclasshook__", "__init__",
    "__init_subclass__",  # set by ``facility`` on every mixin that declares one
})
_private_names: weakref.WeakKeyDictionary[type, frozenset[str]] = weakref.WeakKeyDictionary()


def private_names(mixin: type) -> frozenset[str]:
    """The private and dunder names a mixin defines (cached): two mixins sharing one would
    silently shadow each other by MRO position, so the conflict scan checks them too."""
    try:
        return _private_names[mixin]
    except KeyError:
        pass
    names: set[str] = set()
    for klass in mixin.__mro__[:-1]:
        names.update(n for n in vars(klass) if n.startswith("_") and n not in _STANDARD_PRIVATE)
    result = _private_names[mixin] = frozenset(names)
    return result


_live: dict[tuple[str, str], weakref.ReferenceType[Registry]] = {}
_live_lock = threading.Lock()


def _caller_module() -> str:
    frame = inspect.currentframe()
    try:
        while frame is not None and frame.f_globals.get("__name__") == __name__:
            frame = frame.f_back
        return str(frame.f_globals.get("__name__", "__main__")) if frame else "__main__"
    finally:
        del frame


def _registry_lookup(home: str, name: str) -> Registry:
    """Find a live registry by (creating module, name), importing the module if needed."""
    ref = _live.get((home, name))
    registry = ref() if ref is not None else None
    if registry is None and home not in ("__main__",):
        importlib.import_module(home)
        ref = _live.get((home, name))
        registry = ref() if ref is not None else None
    if registry is None:
        raise RegistrationError(
            f"Registry {name!r} created in module {home!r} does not exist in this process; "
            "create it at module level in an importable module so pickles can find it.", name=name)
    return registry


def _caller_location(depth: int = 2) -> str:
    frame = inspect.currentframe()
    try:
        for _ in range(depth):
            if frame is None:
                break
            frame = frame.f_back
        if frame is None:
            return "<unknown>"
        return f"{frame.f_code.co_filename}:{frame.f_lineno}"
    finally:
        del frame


class Registry:
    """Maps capability names (and aliases, bundles) to :class:`CapabilitySpec` records.

    Args:
        name: a label shown in the repr.
        entry_points: scan the ``onex_compose.capabilities`` entry-point group lazily.

    Example:
        >>> reg = Registry(name="example", entry_points=False)
        >>> @reg.capability("greeting")
        ... class MixinGreeting:
        ...     def greet(self) -> str:
        ...         return "hello"
        >>> "greeting" in reg, len(reg)
        (True, 1)
        >>> reg
        <Registry 'example' (1 capability: greeting)>
    """

    def __init__(self, *, name: str = "private", entry_points: bool = False,
                 home: str | None = None) -> None:
        self.home = home or _caller_module()
        base_name, n = name, 1
        with _live_lock:
            while (self.home, name) in _live and _live[self.home, name]() is not None:
                n += 1
                name = f"{base_name}{n}"
            _live[self.home, name] = weakref.ref(self)
        self.name = name
        self._specs: dict[str, CapabilitySpec] = {}
        self._aliases: dict[str, tuple[str, ...]] = {}
        self._entry_points_pending = entry_points
        self._lock = threading.RLock()
        self._listeners: list[Callable[[frozenset[str]], None]] = []
        self.generation = 0

    def __reduce__(self) -> tuple[Any, ...]:
        # by reference: (module that created it, name); unpickling imports that module
        return (_registry_lookup, (self.home, self.name))

    @property
    def token(self) -> str:
        """Text naming this registry in composed class names (``""`` for the default registry)."""
        if self is default_registry:
            return ""
        return f"~{self.home.replace('.', ':')}~{self.name}"

    # -- registration -------------------------------------------------------------------------

    @overload
    def register(self, spec: CapabilitySpec, /, *, replace: bool = False) -> CapabilitySpec: ...

    @overload
    def register(self, spec: type, /, *, replace: bool = False, **fields: Any) -> CapabilitySpec: ...

    def register(self, spec: CapabilitySpec | type, /, *, replace: bool = False,
                 **fields: Any) -> CapabilitySpec:
        """Register a capability from a spec, or from a mixin class plus spec fields.

        Args:
            spec: a :class:`CapabilitySpec`, or a mixin class (then ``name=`` and other spec
                fields are given as keywords).
            replace: allow replacing an existing registration of the same name.

        Raises:
            RegistrationError: the name is taken (and ``replace`` is false) or invalid.
            MixinDefinitionError: the mixin breaks the mixin rules.
        """
        if not isinstance(spec, type | CapabilitySpec):
            raise RegistrationError(
                f"register() takes a mixin class or a CapabilitySpec, got {spec!r}"
                + (" (a function: capabilities are classes; decorate the mixin class)"
                   if callable(spec) else "") + ".")
        if isinstance(spec, type):
            mixin = spec
            name = fields.pop("name", None) or vars(mixin).get("__onex_capability__")
            if not name:
                raise RegistrationError(
                    f"register({mixin.__qualname__}) needs name='...': the capability name.")
            fields.setdefault("declared_at", _caller_location())
            spec = _spec_for_class(name, mixin, fields)
        elif fields:
            raise RegistrationError("register(spec) takes no extra fields; use attrs.evolve(spec, ...).")
        with self._lock:
            if spec.name in self._aliases:
                raise RegistrationError(
                    f"Capability name {spec.name!r} is already an alias of "
                    f"{list(self._aliases[spec.name])}.", name=spec.name)
            old = self._specs.get(spec.name)
            if old is not None and not replace and old != spec:
                raise RegistrationError(
                    f"Capability {spec.name!r} is already registered (mixin {old.mixin_ref}, "
                    f"declared at {old.declared_at}). Pass replace=True to replace it on purpose.",
                    name=spec.name,
                )
            if "mixin" in spec._loaded:
                check_mixin(spec.name, spec._loaded["mixin"])
            self._specs[spec.name] = spec
            if old is not None:
                self._changed(frozenset({spec.name}))
        return spec

    def capability(self, name: str, **fields: Any) -> Callable[[T], T]:
        """Class decorator: register the decorated mixin as capability ``name``.

        Example:
            >>> reg = Registry(entry_points=False)
            >>> @reg.capability("audit", requires=[])
            ... class MixinAudit:
            ...     __slots__ = ()
            >>> reg.get("audit").mixin is MixinAudit
            True
        """
        fields.setdefault("declared_at", _caller_location())

        def decorate(mixin: T) -> T:
            self.register(mixin, name=name, **fields)
            return mixin

        return decorate

    def alias(self, alias: str, *targets: str, replace: bool = False) -> None:
        """Make ``alias`` stand for one capability, or for several (a bundle).

        Example:
            >>> reg = Registry(entry_points=False)
            >>> reg.alias("fault_tolerance", "retry", "circuit_breaker")
        """
        if not targets:
            raise RegistrationError(f"alias({alias!r}) needs at least one target name.")
        with self._lock:
            if alias in self._specs:
                raise RegistrationError(f"{alias!r} is a capability, it cannot be an alias.")
            if alias in self._aliases and not replace and self._aliases[alias] != targets:
                raise RegistrationError(
                    f"Alias {alias!r} already stands for {list(self._aliases[alias])}; "
                    "pass replace=True to change it.")
            self._aliases[alias] = tuple(targets)
            self._changed(frozenset())

    def unregister(self, name: str) -> None:
        """Remove a capability (tests and plugins); composed classes using it are dropped from the cache."""
        with self._lock:
            if name not in self._specs:
                raise UnknownCapabilityError(name, self.names())
            del self._specs[name]
            self._changed(frozenset({name}))

    def load_manifest(self, manifest: Mapping[str, Any], *, source: str = "<manifest>",
                      replace: bool = False) -> None:
        """Register every capability and alias listed in a manifest mapping.

        The manifest format is ``{"capabilities": {name: entry}, "aliases": {alias: [names]}}``
        where each entry is what :meth:`CapabilitySpec.to_manifest` returns. Nothing is imported.
        """
        for name, entry in manifest.get("capabilities", {}).items():
            entry = dict(entry)
            mixin_ref = entry.pop("mixin")
            spec = CapabilitySpec(name=name, mixin_ref=mixin_ref,
                                  declared_at=entry.pop("declared_at", source), **entry)
            old = self._specs.get(name)
            if old is not None and old.mixin_ref == spec.mixin_ref and not replace:
                continue  # the same manifest seen twice (entry point + direct load)
            self.register(spec, replace=replace)
        for alias, targets in manifest.get("aliases", {}).items():
            self.alias(alias, *targets, replace=replace)

    def on_change(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Call ``listener(names)`` whenever registered capabilities change (cache invalidation)."""
        self._listeners.append(listener)

    def _changed(self, names: frozenset[str]) -> None:
        self.generation += 1
        for listener in self._listeners:
            listener(names)

    # -- lookup -------------------------------------------------------------------------------

    def _scan_entry_points(self) -> None:
        if not self._entry_points_pending:
            return
        with self._lock:
            if not self._entry_points_pending:
                return
            self._entry_points_pending = False
            from importlib.metadata import entry_points

            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if ep.value == "onex_compose.capabilities:MANIFEST" and "metrics" in self._specs:
                    continue  # the built-in manifest, loaded already
                try:
                    obj = ep.load()
                except Exception as exc:  # a broken plugin must not break everybody
                    from onex_compose.capabilities._log import logger

                    logger.opt(exception=exc).warning(
                        "onex_compose: entry point {!r} failed to load: {}", ep.name, exc)
                    continue
                if isinstance(obj, Mapping):
                    self.load_manifest(obj, source=f"entry point {ep.name}")
                elif isinstance(obj, type):
                    if getattr(obj, "__onex_capability__", None) not in self._specs:
                        self.register(obj)
                elif callable(obj):
                    obj(self)

    def get(self, name: str) -> CapabilitySpec:
        """The spec registered under a canonical name (aliases are not followed).

        Raises:
            UnknownCapabilityError: nobody registered ``name``.
        """
        try:
            return self._specs[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            pass
        if not isinstance(name, str):
            raise UnknownCapabilityError(repr(name), self.names())
        targets = self._aliases.get(name)
        if targets is not None and len(targets) == 1:
            return self.get(targets[0])  # a single-target alias names that capability
        if targets is not None:
            raise UnknownCapabilityError(
                name, self.names(),
                what=f"capability ({name!r} is a bundle of {list(targets)}; get() one of them or "
                "use expand())")
        self._scan_entry_points()
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownCapabilityError(name, self.names()) from None

    def expand(self, names: Iterable[str]) -> tuple[list[str], list[UnknownCapabilityError]]:
        """Turn requested names (aliases, bundles) into canonical names, collecting unknowns."""
        out: list[str] = []
        unknown: list[UnknownCapabilityError] = []
        for name in names:
            if not isinstance(name, str):
                unknown.append(UnknownCapabilityError(repr(name), self.names()))
                continue
            if name in self._specs:
                out.append(name)
                continue
            if name in self._aliases:
                sub, bad = self.expand(self._aliases[name])
                out.extend(sub)
                unknown.extend(bad)
                continue
            self._scan_entry_points()
            if name in self._specs or name in self._aliases:
                sub, bad = self.expand([name])
                out.extend(sub)
                unknown.extend(bad)
            else:
                unknown.append(UnknownCapabilityError(name, self.names()))
        return out, unknown

    def providers(self, protocol: str) -> list[str]:
        """Names of registered capabilities providing a protocol."""
        key = protocol_key(protocol)
        return sorted(n for n, s in self._specs.items() if key in s.provides)

    def names(self) -> list[str]:
        """Every known name: capabilities, aliases and bundles."""
        return sorted([*self._specs, *self._aliases])

    @property
    def aliases(self) -> Mapping[str, tuple[str, ...]]:
        """Alias and bundle names and what they stand for."""
        return dict(self._aliases)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name in self._specs or name in self._aliases:
            return True
        self._scan_entry_points()
        return name in self._specs or name in self._aliases

    def __iter__(self) -> Iterator[CapabilitySpec]:
        self._scan_entry_points()
        return iter([self._specs[n] for n in sorted(self._specs)])

    def __len__(self) -> int:
        self._scan_entry_points()
        return len(self._specs)

    def __repr__(self) -> str:
        names = sorted(self._specs)
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        n = len(names)
        extra = f", {len(self._aliases)} aliases" if self._aliases else ""
        return f"<Registry {self.name!r} ({n} capabilit{'y' if n == 1 else 'ies'}{extra}: {shown})>"

    def to_manifest(self) -> dict[str, Any]:
        """The manifest mapping of everything registered (see :meth:`load_manifest`)."""
        return {
            "capabilities": {n: self._specs[n].to_manifest() for n in sorted(self._specs)},
            "aliases": {a: list(t) for a, t in sorted(self._aliases.items())},
        }


_SPEC_FIELDS = ("requires", "optional", "conflicts", "provides", "requires_protocols", "covers",
                "applicable_node_types", "config", "config_ref", "rank", "before", "after",
                "contract", "subcontract_key", "setup", "start", "close", "guard_rank",
                "declared_at")


def _spec_for_class(name: str, mixin: type, fields: dict[str, Any]) -> CapabilitySpec:
    from onex_compose.exceptions import did_you_mean

    for key in fields:
        if key not in _SPEC_FIELDS:
            raise RegistrationError(
                f"register({mixin.__qualname__}): unknown field {key!r}"
                f"{did_you_mean(key, _SPEC_FIELDS)}. Fields: {', '.join(_SPEC_FIELDS)}.",
                name=name)
    for key in ("rank", "guard_rank"):
        value = fields.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise RegistrationError(
                f"register({mixin.__qualname__}): {key} must be an int (lower runs first), "
                f"got {value!r}.", name=name)
    config = fields.pop("config", None)
    if config is not None:
        fields["config_ref"] = _ref_of(config)
    for hook in ("setup", "start", "close"):
        if fields.get(hook) is None:
            candidate = f"{hook}_{name}"
            if any(candidate in vars(k) for k in mixin.__mro__[:-1]):
                fields[hook] = candidate
    spec = CapabilitySpec(name=name, mixin_ref=_ref_of(mixin), **fields)
    spec._loaded["mixin"] = mixin
    if config is not None:
        spec._loaded["config"] = config
    if "__onex_capability__" not in vars(mixin):  # a name the mixin declares itself is kept
        mixin.__onex_capability__ = name  # type: ignore[attr-defined]
    return spec


def capability(name: str, *, registry: Registry | None = None, **fields: Any) -> Callable[[T], T]:
    """Class decorator registering a mixin in the default (or a given) registry.

    Args:
        name: the capability name.
        registry: where to register (default: :data:`default_registry`).
        **fields: any :class:`CapabilitySpec` field (``requires=``, ``provides=``, ...), plus
            ``config=`` the Pydantic config model class.

    Example:
        >>> from onex_compose import Registry, capability
        >>> reg = Registry(entry_points=False)
        >>> @capability("stamp", registry=reg, requires=[])
        ... class MixinStamp:
        ...     __slots__ = ()
        ...     def stamp(self) -> str:
        ...         return "ok"
        >>> "stamp" in reg
        True
    """
    fields.setdefault("declared_at", _caller_location())
    target = registry if registry is not None else default_registry
    return target.capability(name, **fields)


def _builtin_manifest() -> Mapping[str, Any]:
    import importlib

    manifest: Mapping[str, Any] = importlib.import_module("onex_compose.capabilities").MANIFEST
    return manifest


default_registry = Registry(name="default", entry_points=True, home=__name__)
"""The one default registry: the built-in capabilities (from the manifest) plus entry points."""
default_registry.load_manifest(_builtin_manifest(), source="onex_compose.capabilities")
