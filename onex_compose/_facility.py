"""``facility``: a lazily built per-instance attribute for capability mixins.

A capability exposes its facility as an attribute (``self.cache``, ``self.metrics``). Its setup
hook normally builds it from validated config; ``facility`` is the safety net that builds the
default one on first access when setup never ran (a user-written ``_initialize_mixins`` that
skipped a capability, or an instance made with ``__new__``). It is a *non-data* descriptor:
after the first access the value lives in the instance ``__dict__`` and later reads are plain
attribute reads, with no descriptor call (``functools.cached_property`` on 3.11 takes a lock
on every first access and is a data descriptor on some versions; this one is neither).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

__all__ = ["facility"]

T = TypeVar("T")


class facility(Generic[T]):
    """Decorator for a mixin method that builds a facility's default value.

    Example:
        >>> class MixinGreeter:
        ...     __slots__ = ()
        ...     @facility
        ...     def greeter(self) -> str:
        ...         return "hello"
        >>> class Host(MixinGreeter):
        ...     pass
        >>> Host().greeter
        'hello'
    """

    def __init__(self, build: Callable[[Any], T]) -> None:
        self.build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> facility[T]: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> T | facility[T]:
        if obj is None:
            return self
        value = self.build(obj)
        obj.__dict__[self.name] = value
        return value
