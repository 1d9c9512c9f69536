"""``facility``: declares a capability's per-instance attribute and how to build its default.

A capability exposes its facility as an attribute (``self.cache``, ``self.metrics``). Its setup
hook normally builds it from validated config. ``facility`` declares the attribute and a builder
for its default value, which the node uses when setup did not build it (a user-written
``_initialize_mixins`` that skipped a capability, as seed 000's contract-driven example may).

Why the attribute is *not* left on the class as a lazy descriptor: CPython specialises
``obj.attr`` reads into a direct instance-dict load only when the class has no attribute of that
name. A same-named descriptor on the class (even a non-data one shadowed by the instance dict)
makes every ``self.cache`` read take the generic path: about 13 ns more per access, measured by
``benchmarks/bench_compose.py`` (the per-call rows). So ``facility`` removes itself from the
class when the class is created and records its builder in ``__onex_facilities__``; the class
keeps no attribute of that name and reads stay as fast as on a hand-written class.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

__all__ = ["facilities_of", "facility"]

T = TypeVar("T")


class facility(Generic[T]):
    """Decorator for a mixin method that builds a facility's default value.

    The node builds the default when setup did not set the attribute; the class itself keeps
    no attribute of that name (see the module docstring for why).

    Example:
        >>> from onex_compose import NodeCompute
        >>> class MixinGreeter:
        ...     __slots__ = ()
        ...     @facility
        ...     def greeter(self) -> str:
        ...         return "hello"
        >>> class Host(NodeCompute, MixinGreeter):
        ...     pass
        >>> Host().greeter
        'hello'
        >>> "greeter" in vars(MixinGreeter)
        False
    """

    def __init__(self, build: Callable[[Any], T]) -> None:
        self.build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        own = vars(owner).get("__onex_facilities__")
        if own is None:
            own = {}
            owner.__onex_facilities__ = own  # type: ignore[attr-defined]
        own[name] = self.build
        delattr(owner, name)
        if "__init_subclass__" not in vars(owner):
            owner.__init_subclass__ = classmethod(_host_check(owner))  # type: ignore[assignment]

    if TYPE_CHECKING:  # for type checkers only: the attribute has the facility's type
        @overload
        def __get__(self, obj: None, objtype: type | None = None) -> facility[T]: ...

        @overload
        def __get__(self, obj: object, objtype: type | None = None) -> T: ...

        def __get__(self, obj: object | None, objtype: type | None = None) -> T | facility[T]: ...


def _host_check(owner: type) -> Callable[..., None]:
    """The ``__init_subclass__`` a mixin with a facility gets: a subclass that is neither a
    mixin nor a node (``type("Y", (MixinCaching,), {})``) has no facilities and no setup, so
    it gets a ``__getattr__`` that says so (:class:`~onex_compose.exceptions.NotComposedError`)
    instead of a bare ``AttributeError``. Nodes and mixins are left as they are (a
    ``__getattr__`` on a node's class would slow every attribute read)."""

    def __init_subclass__(cls: type, **kwargs: Any) -> None:
        super(owner, cls).__init_subclass__(**kwargs)  # type: ignore[arg-type]
        if (getattr(cls, "__composition__", None) is not None  # a node: the common case first
                or "__onex_capability__" in vars(cls) or hasattr(cls, "__getattr__")):
            return
        cls.__getattr__ = _not_composed  # type: ignore[attr-defined]

    return __init_subclass__


def _not_composed(self: Any, name: str) -> Any:
    from onex_compose.exceptions import NotComposedError

    cls = type(self)
    mixins = [k for k in cls.__mro__ if "__onex_capability__" in vars(k)]
    raise NotComposedError(cls, name, mixins)


_cache: weakref.WeakKeyDictionary[type, Mapping[str, Callable[[Any], Any]]] = (
    weakref.WeakKeyDictionary())


def facilities_of(cls: type) -> Mapping[str, Callable[[Any], Any]]:
    """Every facility declared along ``cls``'s MRO, name to builder (most-derived wins).

    Cached per class (a class's MRO does not change after ``__init_subclass__``).
    """
    try:
        return _cache[cls]
    except KeyError:
        pass
    found: dict[str, Callable[[Any], Any]] = {}
    for klass in reversed(cls.__mro__):
        found.update(vars(klass).get("__onex_facilities__", {}))
    _cache[cls] = found
    return found
