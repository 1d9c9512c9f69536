"""The resolver: a networkx DAG of a request's capabilities, its order, and its conflicts.

Cold path only: the builder calls :func:`resolve` once per new combination and caches the
class, so networkx is imported here lazily, the first time a new combination is composed, and
the warm ``compose()`` path never touches it.

Steps, each collecting every problem rather than stopping at the first:

1. expand aliases and bundles; unknown names are collected;
2. the transitive closure of ``requires`` (and of required protocols, each resolved to its
   provider), minus what ``exclude=`` drops;
3. a ``networkx.DiGraph`` with an edge ``dependency -> dependent`` for every ``requires``,
   present ``optional`` dependency, ``before`` and ``after``, each edge labelled with the
   constraint that made it; a cycle is a :class:`DependencyCycleError` naming the loop;
4. the order: the (rank, name)-smallest topological order of that graph (what networkx's
   ``lexicographical_topological_sort`` computes; :func:`topological_order` does it at a third
   of the cost), so it depends only on the resolved set, never on the request's order or
   repetitions; on a cycle ``networkx.find_cycle`` names the loop;
5. applicability to the base's node type, and conflicts (declared pairs, two providers of one
   protocol, two mixins or a mixin and the base defining the same public name), unless settled
   by ``prefer=``, ``exclude=`` or ``alias=``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from onex_compose._registry import (
    CapabilitySpec,
    Registry,
    private_names,
    protocol_key,
    public_names,
)
from onex_compose.exceptions import (
    CapabilityConflictError,
    CompositionError,
    DependencyCycleError,
    NotApplicableError,
    UnknownCapabilityError,
)

__all__ = ["Options", "Resolution", "resolve"]


@attrs.frozen
class Options:
    """The structural options of a composition, in canonical (hashable) form.

    Args:
        prefer: ``(member, capability)`` pairs: that capability supplies that public name.
        exclude: capability names dropped from the composition.
        exclude_members: ``(capability, member)`` pairs: that capability does not supply it.
        alias: ``(capability, member, new_name)``: the member is supplied under a new name.
    """

    prefer: frozenset[tuple[str, str]] = frozenset()
    exclude: frozenset[str] = frozenset()
    exclude_members: frozenset[tuple[str, str]] = frozenset()
    alias: frozenset[tuple[str, str, str]] = frozenset()

    @classmethod
    def make(cls, prefer: Mapping[str, str] | None = None,
             exclude: Iterable[str] | None = None,
             alias: Mapping[str, str] | None = None) -> Options:
        """Build options from the user's spelling.

        ``prefer={"close": "caching"}``; ``exclude=["event_bus", "caching.clear"]`` (a
        capability, or ``capability.member``); ``alias={"caching.clear": "clear_cache"}``.
        """
        from onex_compose.exceptions import ConfigurationError

        if exclude is not None and (isinstance(exclude, str) or not isinstance(exclude, Iterable)):
            raise ConfigurationError(
                f"exclude= takes a list of names, got {exclude!r}. Example: "
                f"exclude=[{exclude!r}] or exclude=['caching.clear'].")
        for option, value, example in (("prefer", prefer, "prefer={'close': 'caching'}"),
                                       ("alias", alias, "alias={'caching.clear': 'clear_cache'}")):
            if value is not None and not isinstance(value, Mapping):
                raise ConfigurationError(
                    f"{option}= takes a mapping, got {value!r}. Example: {example}.")
        ex_caps: set[str] = set()
        ex_members: set[tuple[str, str]] = set()
        for item in exclude or ():
            if not isinstance(item, str):
                raise ConfigurationError(f"exclude= takes names, got {item!r}.")
            if "." in item:
                cap, _, member = item.partition(".")
                ex_members.add((cap, member))
            else:
                ex_caps.add(item)
        aliases: set[tuple[str, str, str]] = set()
        for key, new in (alias or {}).items():
            cap, dot, member = key.partition(".")
            if (not isinstance(key, str) or not dot or not member or not isinstance(new, str)
                    or not new.isidentifier()):
                raise ConfigurationError(
                    f"alias= maps 'capability.member' to a new identifier, got {key!r}: {new!r}. "
                    "Example: alias={'caching.clear': 'clear_cache'}.")
            aliases.add((cap, member, new))
        prefs = set()
        for member, cap in (prefer or {}).items():
            if not isinstance(cap, str) or not isinstance(member, str):
                raise ConfigurationError(
                    f"prefer= maps a public name to the capability that supplies it, got "
                    f"{member!r}: {cap!r}. Example: prefer={{'close': 'caching'}}.")
            prefs.add((member, cap))
        return cls(frozenset(prefs), frozenset(ex_caps), frozenset(ex_members), frozenset(aliases))

    def __bool__(self) -> bool:
        return bool(self.prefer or self.exclude or self.exclude_members or self.alias)

    def describe(self) -> list[str]:
        """One human line per resolution."""
        out = [f"prefer: {m!r} comes from {c!r}" for m, c in sorted(self.prefer)]
        out += [f"exclude: capability {c!r} dropped" for c in sorted(self.exclude)]
        out += [f"exclude: {m!r} of {c!r} hidden" for c, m in sorted(self.exclude_members)]
        out += [f"alias: {m!r} of {c!r} exposed as {n!r}" for c, m, n in sorted(self.alias)]
        return out

    def suffix(self) -> str:
        """The canonical text form used in composed class names (``""`` when empty)."""
        parts = [f"prefer:{m}={c}" for m, c in sorted(self.prefer)]
        parts += [f"exclude:{c}" for c in sorted(self.exclude)]
        # no dots: pickle reads a dotted __qualname__ as an attribute path
        parts += [f"exclude:{c}:{m}" for c, m in sorted(self.exclude_members)]
        parts += [f"alias:{c}:{m}={n}" for c, m, n in sorted(self.alias)]
        return "|" + "|".join(parts) if parts else ""

    @classmethod
    def parse_suffix(cls, text: str) -> Options:
        """Inverse of :meth:`suffix` (used when unpickling a class by name)."""
        prefer: dict[str, str] = {}
        exclude: list[str] = []
        alias: dict[str, str] = {}
        for part in filter(None, text.split("|")):
            kind, _, rest = part.partition(":")
            if kind == "prefer":
                m, _, c = rest.partition("=")
                prefer[m] = c
            elif kind == "exclude":
                exclude.append(rest.replace(":", "."))
            elif kind == "alias":
                k, _, n = rest.partition("=")
                alias[k.replace(":", ".")] = n
        return cls.make(prefer, exclude, alias)


@attrs.frozen
class Resolution:
    """What the resolver decided for one request.

    Attributes:
        specs: the resolved capabilities, dependencies first.
        required_by: for each capability, the resolved capabilities that require it.
        providers: each public name a capability adds, and which capability supplies it.
        overrides: names a capability supplies that the base or another capability also defines.
        edges: every ordering edge ``(before, after, constraint)``.
    """

    specs: tuple[CapabilitySpec, ...]
    required_by: Mapping[str, tuple[str, ...]]
    excluded: frozenset[str]
    providers: Mapping[str, str]
    overrides: Mapping[str, tuple[str, ...]]
    edges: tuple[tuple[str, str, str], ...]

    names: tuple[str, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(s.name for s in self.specs))


def closure(registry: Registry, requested: Iterable[str], options: Options,
            problems: list[CompositionError], fixed: Iterable[CapabilitySpec] = (),
            hit: set[str] | None = None) -> dict[str, CapabilitySpec]:
    """Transitive closure of ``requires`` and required protocols over the requested names.

    ``fixed`` are specs the base already has (taken as they are, whichever registry they came
    from); ``hit`` collects the excluded capabilities that the request would otherwise include.
    """
    names, unknown = registry.expand(requested)
    problems.extend(unknown)
    for name in sorted(options.exclude):
        if name not in registry:
            problems.append(UnknownCapabilityError(name, registry.names(),
                                                   what="capability in exclude="))
    hit = set() if hit is None else hit
    hit.update(n for n in names if n in options.exclude)
    selected: dict[str, CapabilitySpec] = {}
    known = {s.name: s for s in fixed}
    stack = [*known, *(n for n in names if n not in options.exclude)]
    excluded_but_required: dict[str, str] = {}
    while stack:
        name = stack.pop()
        if name in selected:
            continue
        try:
            spec = known[name] if name in known else registry.get(name)
        except UnknownCapabilityError as exc:
            problems.append(exc)
            continue
        selected[name] = spec
        for dep in _ordered(spec, "requires"):
            if dep in options.exclude:
                excluded_but_required.setdefault(dep, name)
                hit.add(dep)
            else:
                stack.append(dep)
        for proto in _ordered(spec, "requires_protocols"):
            providers = registry.providers(proto)
            providers = [p for p in providers if p not in options.exclude]
            if not providers:
                problems.append(UnknownCapabilityError(
                    protocol_key(proto),
                    sorted({p for s in registry for p in s.provides}),
                    what=f"protocol (required by {name!r})"))
            elif len(providers) == 1:
                stack.append(providers[0])
            else:
                chosen = [p for p in providers if p in selected or p in names]
                if len(chosen) != 1:
                    problems.append(CapabilityConflictError(
                        providers[0], providers[1], kind="protocol", member=protocol_key(proto),
                        hint=f"{name!r} requires protocol {protocol_key(proto)!r}; request one "
                        f"of {providers} explicitly to choose its provider"))
                else:
                    stack.append(chosen[0])
    for dep, by in excluded_but_required.items():
        if by in selected:
            problems.append(CapabilityConflictError(by, dep, kind="excluded-required"))
    return selected


def _graph(selected: Mapping[str, CapabilitySpec]) -> Any:
    """The request's ``networkx.DiGraph``: an edge ``a -> b`` means a comes first.

    Edges are collected in a plain dict first and handed to networkx in one call (the first
    constraint found for a pair labels it); building edge by edge costs about twice as much.
    """
    import networkx as nx

    edges: dict[tuple[str, str], str] = {}

    def edge(a: str, b: str, why: str) -> None:
        if a != b and a in selected and b in selected and (a, b) not in edges:
            edges[a, b] = why

    for name, spec in selected.items():
        for dep in spec.requires:
            edge(dep, name, f"{name} requires {dep}")
        for dep in spec.optional:
            edge(dep, name, f"{name} optionally uses {dep}")
        for proto in spec.requires_protocols:
            for other, ospec in selected.items():
                if proto in ospec.provides:
                    edge(other, name, f"{name} requires protocol {proto} of {other}")
        for later in spec.before:
            edge(name, later, f"{name} before {later}")
        for earlier in spec.after:
            edge(earlier, name, f"{name} after {earlier}")
    graph = nx.DiGraph(constraints=edges)  # the labels, also kept whole for Resolution.edges
    graph.add_nodes_from(selected)
    graph.add_edges_from((a, b, {"constraint": why}) for (a, b), why in edges.items())
    return graph


def _conflicts(base: type, specs: list[CapabilitySpec], options: Options,
               problems: list[CompositionError], skip: type | None = None,
               ) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    names = {s.name for s in specs}
    by_name = {s.name: s for s in specs}
    # declared conflicts, reported once per pair
    seen: set[frozenset[str]] = set()
    for spec in specs:
        for other in (sorted(spec.conflicts & names) if spec.conflicts else ()):
            pair = frozenset({spec.name, other})
            if pair not in seen:
                seen.add(pair)
                problems.append(CapabilityConflictError(
                    spec.name, other, kind="declared",
                    where={spec.name: spec.declared_at, other: by_name[other].declared_at}))
    # two providers of one protocol
    provided: dict[str, str] = {}
    for spec in specs:
        for proto in _ordered(spec, "provides"):
            if proto in provided:
                first = provided[proto]
                problems.append(CapabilityConflictError(
                    first, spec.name, kind="protocol", member=proto,
                    where={first: by_name[first].declared_at, spec.name: spec.declared_at}))
            else:
                provided[proto] = spec.name
    # public names: mixins against each other and against the base
    base_owner = _base_owners(base, skip)
    base_names = base_owner.keys()
    protected: frozenset[str] = getattr(base, "__onex_protected__", frozenset())
    prefer = dict(options.prefer)
    hidden = set(options.exclude_members)
    renamed = {(c, m): n for c, m, n in options.alias}
    owners: dict[str, list[str]] = {}
    for spec in specs:
        if hidden or renamed:
            for member in _members(spec):
                if (spec.name, member) in hidden:
                    continue
                owners.setdefault(renamed.get((spec.name, member), member), []).append(spec.name)
        else:
            for member in _members(spec):
                owners.setdefault(member, []).append(spec.name)
    # private and dunder names: two mixins sharing one shadow each other silently by MRO
    # position; a mixin may not take the base's own private names either
    private_owner: dict[str, str] = {}
    for spec in specs:
        for member in _ordered(spec, "private"):
            if member in prefer:
                continue
            first = private_owner.setdefault(member, spec.name)
            if first != spec.name:
                problems.append(CapabilityConflictError(
                    first, spec.name, kind="member", member=member,
                    where={first: by_name[first].declared_at, spec.name: spec.declared_at},
                    hint=f"rename {member!r} in one of the mixins (private helpers clash too: the "
                    f"MRO would silently pick one), or prefer={{{member!r}: {first!r}}}"))
            elif member in protected or member.startswith("_onex_"):
                problems.append(CapabilityConflictError(
                    spec.name, base.__qualname__, kind="base-member", member=member,
                    where={spec.name: spec.declared_at},
                    hint=f"{member!r} belongs to the node base; rename it in the mixin"))
    providers: dict[str, str] = {}
    overrides: dict[str, tuple[str, ...]] = {}
    for member, caps in sorted(owners.items()):
        winner = prefer.get(member)
        if winner is not None and winner not in caps:
            problems.append(CapabilityConflictError(
                winner, caps[0], kind="member", member=member,
                hint=f"prefer={{{member!r}: {winner!r}}} names a capability that does not "
                f"define {member!r}; it is defined by {caps}"))
            continue
        if len(caps) > 1 and winner is None:
            for other in caps[1:]:
                problems.append(CapabilityConflictError(
                    caps[0], other, kind="member", member=member,
                    where={caps[0]: by_name[caps[0]].declared_at,
                           other: by_name[other].declared_at}))
            continue
        owner = winner or caps[0]
        if member in base_names and (winner is None or member in protected):
            definer = base_owner[member]
            side = definer if base is skip else base
            defined_in = "" if definer is side else f" (in {definer.__qualname__})"
            ways = (f"rename it in the mixin, or alias={{'{owner}.{member}': '{owner}_{member}'}}"
                    + ("" if member in protected else
                       f", or prefer={{{member!r}: {owner!r}}} to override the base on purpose"))
            problems.append(CapabilityConflictError(
                owner, side.__qualname__, kind="base-member", member=member,
                where={owner: by_name[owner].declared_at,
                       side.__qualname__: _where(definer, member)},
                hint=f"the base {side.__qualname__} already defines {member!r}{defined_in}"
                + (" and no capability may replace it" if member in protected else "")
                + f"; {ways}"))
            continue
        providers[member] = owner
        if len(caps) > 1 or member in base_names:
            others = [c for c in caps if c != owner]
            if member in base_names:
                others.append(base_owner[member].__qualname__)
            overrides[member] = tuple(others)
    # resolutions that refer to nothing
    for cap in sorted(set(prefer.values())) if prefer else ():
        if cap not in names:
            problems.append(UnknownCapabilityError(cap, sorted(names), what="capability in prefer="))
    for member, cap in sorted(prefer.items()) if prefer else ():
        if cap in names and member not in owners:
            problems.append(UnknownCapabilityError(
                member, sorted(owners), what=f"public name in prefer= (for {cap!r})"))
    for cap, member in sorted(hidden | {(c, m) for c, m, _ in options.alias}):
        if cap not in names:
            problems.append(UnknownCapabilityError(cap, sorted(names),
                                                   what="capability in exclude=/alias="))
        elif member not in public_names(by_name[cap].mixin):
            problems.append(UnknownCapabilityError(
                f"{cap}.{member}", sorted(f"{cap}.{m}" for m in public_names(by_name[cap].mixin)),
                what="member in exclude=/alias="))
    return providers, overrides


def _ordered(spec: CapabilitySpec, field: str) -> tuple[str, ...]:
    """A spec's set-valued field (or its mixin's private names) as a sorted tuple, cached per
    spec: iteration order fixes the order problems are reported in, at no cost per compose."""
    key = f"sorted_{field}"
    try:
        return spec._loaded[key]  # type: ignore[no-any-return]
    except KeyError:
        values = private_names(spec.mixin) if field == "private" else getattr(spec, field)
        result = spec._loaded[key] = tuple(sorted(values))
        return result


def _members(spec: CapabilitySpec) -> tuple[str, ...]:
    """The public names a capability adds (its hook methods excepted), sorted; cached per spec."""
    try:
        return spec._loaded["members"]  # type: ignore[no-any-return]
    except KeyError:
        hooks = {spec.setup, spec.start, spec.close,
                 f"setup_{spec.name}", f"start_{spec.name}", f"close_{spec.name}"}
        members = tuple(sorted(m for m in public_names(spec.mixin) if m not in hooks))
        spec._loaded["members"] = members
        return members


def _base_owners(base: type, skip: type | None) -> dict[str, type]:
    """Each public name of the base (methods and declared instance attributes) -> defining class.

    Cached per base for composed classes (``skip`` is ``None``): a base's own names do not change.
    The cache is stored on the base itself (``__onex_owners__``): the mapping names the base, so
    a module-level table, even weakly keyed, would keep every base alive forever.
    """
    if skip is None:
        cached = vars(base).get("__onex_owners__")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
    owners: dict[str, type] = {}
    for klass in reversed(base.__mro__[:-1]):
        if "__onex_capability__" not in vars(klass) and klass is not skip:
            for n in vars(klass):
                if not n.startswith("_"):
                    owners[n] = klass
            for n in vars(klass).get("__onex_instance_attrs__", ()):
                owners[n] = klass
    if skip is None:
        try:
            type.__setattr__(base, "__onex_owners__", owners)
        except TypeError:  # a built-in base (seed 000's resolver passes ``object``): no cache
            pass
    return owners


def _where(obj: type, member: str | None = None) -> str:
    """``file:line`` of a class (or of one of its members).

    Functions know where they were defined even when ``__module__`` was rewritten for nicer
    reprs (``onex_compose.NodeCompute``), so a member's code object is asked first.
    """
    import inspect

    candidates = [vars(obj).get(member)] if member else []
    candidates += list(vars(obj).values())
    for value in candidates:
        fn = getattr(value, "__func__", getattr(value, "fget", value))
        code = getattr(fn, "__code__", None)
        if code is not None:
            return f"{code.co_filename}:{code.co_firstlineno}"
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (OSError, TypeError):
        return obj.__module__


def topological_order(graph: Any, keys: Mapping[str, tuple[int, str]]) -> list[str] | None:
    """The (rank, name)-smallest topological order of a networkx DiGraph, or ``None`` on a cycle.

    Kahn's algorithm with a heap over the graph's own adjacency (``graph.succ``/``in_degree``):
    the same order ``networkx.lexicographical_topological_sort(graph, key=...)`` gives (a
    property test compares the two), at about a third of its cost on the small graphs a
    composition has, since cold compose time is a benchmarked budget.
    """
    import heapq

    indegree = dict(graph.in_degree())
    ready = [keys[n] for n, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    succ = graph.succ
    order: list[str] = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        for nxt in succ[node]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                heapq.heappush(ready, keys[nxt])
    return order if len(order) == len(indegree) else None


def resolve(registry: Registry, base: type, requested: Iterable[str],
            options: Options = Options(), *, node_type: str | None = None,
            fixed: Iterable[CapabilitySpec] = (), skip: type | None = None) -> Resolution:
    """Resolve a request into an ordered, conflict-free set of capabilities.

    Args:
        registry: where names are looked up.
        base: the node base class (its public names take part in the conflict scan).
        requested: capability names, aliases or bundles, in any order, repeats allowed.
        options: the structural resolutions (``prefer``, ``exclude``, ``alias``).
        node_type: the base's node type for the applicability check (``None`` skips it).
        fixed: specs of the capabilities already in the base's own bases (taken as they are,
            even when they come from another registry); they are part of the resolved set.
        skip: a class whose own public names are exempt from the base clash scan (the
            hand-written class being checked: its own methods override on purpose).

    Raises:
        CompositionError: every problem of the request, folded as described in
            :mod:`onex_compose.exceptions`.
    """
    import networkx as nx

    problems: list[CompositionError] = []
    hit: set[str] = set()
    selected = closure(registry, requested, options, problems, fixed, hit)
    graph = _graph(selected)
    order = topological_order(graph, {n: (s.rank, n) for n, s in selected.items()})
    if order is None:
        cycle_edges = nx.find_cycle(graph)
        cycle = [a for a, _ in cycle_edges] + [cycle_edges[0][0]]
        constraints = [graph.edges[a, b]["constraint"] for a, b in cycle_edges]
        problems.append(DependencyCycleError(cycle, constraints))
        order = sorted(selected, key=lambda n: (selected[n].rank, n))
    specs = [selected[n] for n in order]
    if node_type is not None:
        for spec in specs:
            if node_type not in spec.applicable_node_types:
                problems.append(NotApplicableError(spec.name, node_type, spec.applicable_node_types))
    providers: dict[str, str] = {}
    overrides: dict[str, tuple[str, ...]] = {}
    unloadable = False
    for spec in specs:
        if "mixin" not in spec._loaded:  # imported and checked once per spec
            try:
                spec.mixin  # noqa: B018
            except CompositionError as exc:
                problems.append(exc)
                unloadable = True
    if not unloadable:
        providers, overrides = _conflicts(base, specs, options, problems, skip)
    if problems:
        raise CompositionError.collect(problems)
    required_by: dict[str, list[str]] = {n: [] for n in order}
    for spec in specs:
        for dep in spec.requires:
            if dep in required_by:
                required_by[dep].append(spec.name)
        for proto in spec.requires_protocols:
            for other in order:
                if protocol_key(proto) in selected[other].provides:
                    required_by[other].append(spec.name)
    edges = tuple(sorted((a, b, why) for (a, b), why in graph.graph["constraints"].items()))
    return Resolution(
        specs=tuple(specs),
        excluded=frozenset(hit),
        required_by={k: tuple(v) if len(v) < 2 else tuple(sorted(set(v)))
                     for k, v in required_by.items()},
        providers=providers,
        overrides=overrides,
        edges=edges,
    )
