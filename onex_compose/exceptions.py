"""Every error onex-compose raises, rooted in one class.

The tree::

    OnexError
    ├── CompositionError                      a class could not be composed
    │   ├── UnknownCapabilityError            (also LookupError)   a name nobody registered
    │   ├── DependencyCycleError              (also ValueError)    requires/before/after loop
    │   ├── CapabilityConflictError           (also TypeError)     two capabilities clash
    │   ├── NotApplicableError                (also TypeError)     wrong node type
    │   ├── MixinDefinitionError              (also TypeError)     a mixin breaks the mixin rules
    │   ├── MROError                          (also TypeError)     no consistent class layout
    │   └── RegistrationError                 (also ValueError)    a bad or duplicate registration
    ├── ConfigurationError                    (also ValueError)    bad capability configuration
    ├── ContractError                         (also ValueError)    invalid or unsafe contract
    ├── NotComposedError                      (also AttributeError) a mixin used without a node
    └── ServiceUnavailableError               (also RuntimeError)  the node reports itself unhealthy

``OnexError`` is the root so that ``except OnexError`` catches everything the library raises on
purpose; ``CompositionError`` keeps the name the design documents use for composition failures.
Every subclass also inherits the built-in it refines, so existing ``except LookupError`` or
``except TypeError`` clauses keep working (the attrs convention).

One compose reports all its problems at once: when every problem is of one kind, that kind's
class is raised with ``.errors`` listing each instance; when kinds are mixed, a plain
:class:`CompositionError` is raised and ``.errors`` holds them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from difflib import get_close_matches
from typing import Any

__all__ = [
    "CapabilityConflictError",
    "CompositionError",
    "ConfigurationError",
    "ContractError",
    "DependencyCycleError",
    "MROError",
    "MixinDefinitionError",
    "NotApplicableError",
    "NotComposedError",
    "OnexError",
    "RegistrationError",
    "ServiceUnavailableError",
    "UnknownCapabilityError",
    "did_you_mean",
]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest candidate, or ``""``.

    Example:
        >>> did_you_mean("cachng", ["caching", "metrics"])
        " (did you mean 'caching'?)"
    """
    if not isinstance(word, str):
        return ""
    match = get_close_matches(word, [c for c in candidates if isinstance(c, str)], n=1,
                              cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _restore_error(cls: type[OnexError], state: dict[str, Any], args: tuple[Any, ...]) -> OnexError:
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class OnexError(Exception):
    """Root of every error raised by onex-compose on purpose.

    Errors pickle with their data (they cross process boundaries, e.g. a ProcessPoolExecutor).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_error, (type(self), dict(self.__dict__), self.args))


class CompositionError(OnexError):
    """A class could not be composed.

    Attributes:
        errors: every individual problem found in one request (each itself an
            ``OnexError``); a single-problem error lists itself.
    """

    def __init__(self, message: str, *, errors: Sequence[OnexError] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors: list[OnexError] = list(errors) if errors else [self]

    def __str__(self) -> str:
        return self.message

    @classmethod
    def collect(cls, problems: Sequence[CompositionError]) -> CompositionError:
        """Fold several problems of one request into one error to raise.

        One kind of problem raises that kind listing every instance; mixed kinds raise a plain
        :class:`CompositionError` holding them all.
        """
        if len(problems) == 1:
            return problems[0]
        kinds = {type(p) for p in problems}
        lines = "\n".join(f"  {i}. {p.message}" for i, p in enumerate(problems, 1))
        message = f"{len(problems)} problems in one composition:\n{lines}"
        if len(kinds) == 1:
            kind = next(iter(kinds))
            err = kind.__new__(kind)
            CompositionError.__init__(err, message, errors=problems)
            # copy the data of the first instance so attribute access stays meaningful
            for key, value in vars(problems[0]).items():
                if key not in ("message", "errors"):
                    setattr(err, key, value)
            return err
        return CompositionError(message, errors=problems)


#: capabilities seed 000 lists (its ``Mixin*`` classes, in snake_case) that no release implements
#: yet: asking for one says so instead of suggesting an unrelated registered name
SEED_PLANNED: frozenset[str] = frozenset({
    "service_protocol"})
_PLANNED_NOTE = "a seed capability that is not available yet (planned)"


class UnknownCapabilityError(CompositionError, LookupError):
    """A capability name (or alias/bundle) that nobody registered.

    A name seed 000 lists but no release implements yet (:data:`SEED_PLANNED`, such as
    ``authorization``) is reported as planned rather than given a look-alike suggestion.

    Attributes:
        name: the unknown name.
        known: every name the registry knows.
        suggestion: the closest known name, or ``None``.
        planned: whether ``name`` is a planned seed capability.
    """

    def __init__(self, name: str, known: Iterable[str], *, what: str = "capability") -> None:
        self.name = name
        self.known = sorted(known)
        about_capabilities = what.startswith("capability")
        planned = SEED_PLANNED.difference(self.known) if about_capabilities else frozenset()
        self.planned = name in planned
        if self.planned:
            self.suggestion = None
            super().__init__(
                f"{name!r} is {_PLANNED_NOTE}: seed 000 lists it, but this version of "
                f"onex-compose does not provide it. Known names: {', '.join(self.known) or '(none)'}. "
                "Register your own implementation with registry.register(...) (see "
                "docs/writing-capabilities.md), or drop it from the request.")
            return
        close = get_close_matches(name, [*self.known, *planned], n=1, cutoff=0.6)
        self.suggestion = close[0] if close and close[0] not in planned else None
        if self.suggestion:
            hint = f" Did you mean {self.suggestion!r}?"
        elif close:
            hint = f" (Close to {close[0]!r}, {_PLANNED_NOTE}.)"
        else:
            hint = ""
        super().__init__(
            f"Unknown {what} {name!r}.{hint} Known names: {', '.join(self.known) or '(none)'}. "
            f"Register it with registry.register(...) or install the package that provides it."
        )


class DependencyCycleError(CompositionError, ValueError):
    """The ``requires``/``before``/``after`` constraints of a request form a loop.

    Attributes:
        cycle: the capabilities on the loop, first repeated at the end (``[a, b, c, a]``).
        constraints: for each edge of the loop, the constraint that made it.
    """

    def __init__(self, cycle: Sequence[str], constraints: Sequence[str]) -> None:
        self.cycle = list(cycle)
        self.constraints = list(constraints)
        super().__init__(
            f"Dependency cycle: {' -> '.join(self.cycle)}. Constraints on the loop: "
            f"{'; '.join(self.constraints)}. Remove one of them (an order-only 'before'/'after' "
            "is usually the one to drop)."
        )


class CapabilityConflictError(CompositionError, TypeError):
    """Two capabilities (or a capability and the base) clash.

    Attributes:
        first, second: the two sides.
        member: the clashing public name or protocol (``None`` for a declared conflict).
        kind: ``"declared"``, ``"protocol"``, ``"member"``, ``"base-member"`` or
            ``"excluded-required"`` (``second`` is excluded by ``exclude=`` but ``first``
            requires it).
        where: where each side was declared (``{"caching": "capabilities/caching.py:40"}``).
    """

    def __init__(
        self,
        first: str,
        second: str,
        *,
        kind: str,
        member: str | None = None,
        where: dict[str, str] | None = None,
        hint: str = "",
    ) -> None:
        self.first, self.second, self.kind, self.member = first, second, kind, member
        self.where = dict(where or {})
        loc = "; ".join(f"{k} at {v}" for k, v in self.where.items())
        if kind == "excluded-required":
            super().__init__(
                f"Capability {second!r} is excluded (exclude=[{second!r}]) but {first!r} "
                f"requires it" + (f" ({loc})" if loc else "") + ". "
                + (hint or f"Ways out: stop excluding {second!r}, or exclude {first!r} too "
                   f"(exclude=[{first!r}, {second!r}]) if you do not need it") + ".")
            return
        subject = {
            "declared": "declare each other as conflicting",
            "protocol": f"both provide protocol {member!r}",
            "member": f"both define public name {member!r}",
            "base-member": f"both define public name {member!r}",
        }.get(kind, f"clash on {member!r}")
        ways = hint or (
            f"Ways out: exclude=[{second!r}] (drop one capability)"
            if kind in ("declared", "protocol")
            else f"Ways out: prefer={{{member!r}: {first!r}}} (or {second!r}) to pick the winner, "
            f"alias={{'{second}.{member}': '{second}_{member}'}} to keep both under two names"
        )
        super().__init__(
            f"Capabilities {first!r} and {second!r} {subject}"
            + (f" ({loc})" if loc else "")
            + f". {ways}."
        )


class NotApplicableError(CompositionError, TypeError):
    """A capability cannot be used on the base's node type (seed 002's wording).

    Attributes:
        capability: the capability's name.
        mixin: the mixin's contract name (``mixin_<capability>``).
        node_type: the base's node type.
        applicable: the node types it supports.
    """

    def __init__(self, capability: str, node_type: str, applicable: Iterable[str]) -> None:
        self.capability = capability
        self.mixin = f"mixin_{capability}"
        self.node_type = node_type
        self.applicable = sorted(applicable)
        super().__init__(
            f"Mixin {self.mixin!r} not applicable to node type {node_type!r}; it applies to "
            f"[{', '.join(self.applicable)}]. Use one of those node types or drop {capability!r}."
        )


class MixinDefinitionError(CompositionError, TypeError):
    """A mixin breaks the rules every mixin follows (no ``__init__``, empty slots, no metaclass).

    Attributes:
        capability: the capability being registered.
        mixin: the offending class.
        rule: which rule was broken.
    """

    def __init__(self, capability: str, mixin: type, rule: str, why: str) -> None:
        self.capability, self.mixin, self.rule = capability, mixin, rule
        super().__init__(
            f"Mixin {mixin.__qualname__} for capability {capability!r} {rule}: {why}"
        )


class MROError(CompositionError, TypeError):
    """No consistent class layout (MRO, metaclass or ``__slots__``) exists for a composition.

    Attributes:
        base: the base class.
        capabilities: the capabilities being combined.
        tried: the base order that was tried.
    """

    def __init__(self, base: type, capabilities: Sequence[str], tried: Sequence[type], why: str) -> None:
        self.base = base
        self.capabilities = list(capabilities)
        self.tried = list(tried)
        order = ", ".join(t.__qualname__ for t in self.tried)
        super().__init__(
            f"Cannot build {base.__qualname__}[{','.join(capabilities)}]: {why}. "
            f"Bases tried in this order: ({order})."
        )


class RegistrationError(CompositionError, ValueError):
    """A capability registration is invalid (duplicate name, bad name, unknown reference)."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        self.name = name
        super().__init__(message)


class ConfigurationError(OnexError, ValueError):
    """Configuration for a capability is invalid or addressed to a capability the node lacks.

    Attributes:
        capability: the capability concerned (or ``None``).
        problems: one line per problem, each with its field path.
    """

    def __init__(self, message: str, *, capability: str | None = None,
                 problems: Sequence[str] = ()) -> None:
        self.capability = capability
        self.problems = list(problems)
        full = message + ("".join(f"\n  - {p}" for p in self.problems) if self.problems else "")
        super().__init__(full)


class ContractError(OnexError, ValueError):
    """A contract (YAML file or model) is invalid or unsafe to load.

    Attributes:
        source: the file or object the contract came from.
        problems: one entry per problem (``{"path", "message", "line"}``).
    """

    def __init__(self, message: str, *, source: str | None = None,
                 problems: Sequence[dict[str, Any]] = ()) -> None:
        self.source = source
        self.problems = list(problems)
        lines = []
        for p in self.problems:
            where = f"{source}:{p['line']}: " if source and p.get("line") else ""
            path = f"{p['path']}: " if p.get("path") else ""
            lines.append(f"\n  - {where}{path}{p['message']}")
        super().__init__(message + "".join(lines))


class NotComposedError(OnexError, AttributeError):
    """A capability mixin was used on a class with no node base, so nothing set it up.

    An ``AttributeError`` (``hasattr`` and ``getattr(obj, name, default)`` keep working).

    Attributes:
        cls: the class that derives from the mixin(s) but from no node base.
        name: the attribute that was read.
        mixins: the capability mixins in its MRO.
    """

    def __init__(self, cls: type, name: str, mixins: Sequence[type]) -> None:
        self.cls, self.name, self.mixins = cls, name, list(mixins)
        caps = [str(vars(m).get("__onex_capability__")) for m in self.mixins]
        which = ", ".join(f"{m.__qualname__} ({c!r})" for m, c in zip(self.mixins, caps,
                                                                       strict=True))
        bases = ", ".join(["NodeCompute", *(m.__qualname__ for m in self.mixins)])
        super().__init__(
            f"{cls.__qualname__!r} object has no attribute {name!r}: {cls.__qualname__} derives "
            f"from capability mixin {which or '(none)'} but from no node base, so no capability "
            f"was set up. Compose it onto a node base: compose(NodeCompute, {caps!r}), or "
            f"class {cls.__qualname__}({bases}) (any node base: NodeCompute, NodeEffect, "
            "NodeReducer, NodeOrchestrator).")


class ServiceUnavailableError(OnexError, RuntimeError):
    """The node (or a dependency it needs) is unavailable; raised by user code as in seed 000.

    Example:
        >>> raise ServiceUnavailableError("Service unhealthy")
        Traceback (most recent call last):
        ...
        onex_compose.exceptions.ServiceUnavailableError: Service unhealthy
    """
