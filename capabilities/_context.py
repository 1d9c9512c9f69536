"""Context shared by capabilities: deadlines, correlation ids, retry scopes, and the clock.

These travel in :mod:`contextvars`, so they follow a call across ``await`` and into tasks it
creates, and never leak between concurrent calls:

* ``deadline``: absolute time (on :func:`monotonic`, or on the clock the capability was given)
  by which the current operation must end; set by the timeout capability for the duration of a
  call (nested deadlines keep the earliest), read by retry so it never sleeps past it.
* ``correlation_id``: the id of the request being served; set by the logging capability,
  carried into published events.
* ``credentials``: the :class:`Credentials` presented for the current call (set by
  ``node.credentials(...)`` or by a transport from its headers), read by authentication.
* ``principal``: the :class:`Principal` authentication verified for the current call, read by
  authorization, audit_log, secure_storage and the logging patcher.
* ``retry_scope``: a :class:`RetryScope` set while a retry loop runs, so a ``with_retry``
  nested inside a retried ``process()`` makes a single attempt instead of multiplying attempts.
  It also carries the attempt number and the loop's own total budget (retry's ``max_elapsed``,
  timeout's ``total_timeout``), which :func:`current_deadline` folds in. A task or thread
  started inside the loop copies the variable, so the scope records the thread that runs the
  loop and whether the loop still runs (retry tells its own task apart from the others of that
  thread): only the owner's nested calls are single attempts, and a finished loop's budget
  binds nobody.

All timing logic takes an injectable clock (a zero-argument callable returning seconds);
:class:`ManualClock` is the test double. :meth:`ManualClock.run` runs a coroutine on an event
loop whose time *is* the manual clock and which jumps over idle waits, so tests of timeouts and
queue waits take no wall-clock time. That loop is written by hand (a selector loop whose
``time()`` is the clock and whose ``select`` advances it) because no installed library offers a
virtual-time asyncio loop for Python 3.11.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, TypeVar

__all__ = [
    "Credentials",
    "CredentialsScope",
    "ManualClock",
    "Principal",
    "PrincipalScope",
    "RetryScope",
    "correlation_id",
    "credentials",
    "current_deadline",
    "current_principal",
    "deadline",
    "monotonic",
    "principal",
    "remaining",
    "retry_scope",
]

T = TypeVar("T")

monotonic = time.monotonic

deadline: ContextVar[float | None] = ContextVar("onex_deadline", default=None)
correlation_id: ContextVar[str | None] = ContextVar("onex_correlation_id", default=None)
retry_scope: ContextVar[Any] = ContextVar("onex_retry_scope", default=None)


class Credentials:
    """What a caller presented to prove who it is: a scheme and its secret value.

    ``scheme`` is ``"bearer"`` (a JWT), ``"api_key"`` or ``"trusted"``; ``value`` is the token or
    key. The value never appears in the repr, so a credentials object can be logged safely.

    Example:
        >>> c = Credentials("bearer", "eyJhbGciOi...")
        >>> c
        Credentials(scheme='bearer', value=***)
        >>> c.value.startswith("eyJ")
        True
    """

    __slots__ = ("scheme", "value")

    def __init__(self, scheme: str, value: str) -> None:
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "value", value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Credentials are read-only")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credentials):
            return NotImplemented
        return (self.scheme, self.value) == (other.scheme, other.value)

    def __hash__(self) -> int:
        return hash((self.scheme, self.value))

    def __repr__(self) -> str:
        return f"Credentials(scheme={self.scheme!r}, value=***)"

    def __reduce__(self) -> Any:
        raise TypeError("Credentials hold a secret and are not picklable")


class Principal:
    """Who a call runs as, once authentication has verified its credentials.

    Attributes:
        subject: the identity (a JWT's ``sub``, an API key's subject, ``"system"``).
        scheme: how it was established: ``"jwt"``, ``"api_key"`` or ``"trusted"``.
        roles: role names (a frozenset).
        scopes: OAuth scopes (a frozenset).
        tenant: the tenant claim, or ``None``.
        claims: the verified claims, read-only (a mapping proxy).
        expires_at: when the credentials expire (epoch seconds), or ``None``.
        key_id: the API key id or the JWT's ``kid``, or ``None``.

    Example:
        >>> p = Principal("alice", "jwt", roles=["writer"], scopes="orders:read orders:write")
        >>> p
        Principal(subject='alice', scheme='jwt', roles=['writer'])
        >>> sorted(p.scopes)
        ['orders:read', 'orders:write']
        >>> Principal.system().scheme
        'trusted'
    """

    __slots__ = ("claims", "expires_at", "key_id", "roles", "scheme", "scopes", "subject",
                 "tenant")

    subject: str
    scheme: str
    roles: frozenset[str]
    scopes: frozenset[str]
    tenant: str | None
    claims: Mapping[str, Any]
    expires_at: float | None
    key_id: str | None

    def __init__(self, subject: str, scheme: str, *, roles: Iterable[str] = (),
                 scopes: Iterable[str] | str = (), tenant: str | None = None,
                 claims: Mapping[str, Any] | None = None, expires_at: float | None = None,
                 key_id: str | None = None) -> None:
        if not isinstance(subject, str) or not subject:
            raise ValueError(f"Principal subject must be a non-empty string, got {subject!r}")
        if isinstance(scopes, str):
            scopes = scopes.split()
        values = {
            "subject": subject, "scheme": scheme, "roles": frozenset(roles),
            "scopes": frozenset(scopes), "tenant": tenant,
            "claims": MappingProxyType(dict(claims or {})), "expires_at": expires_at,
            "key_id": key_id,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def system(cls, subject: str = "system", roles: Iterable[str] = ()) -> Principal:
        """A principal for trusted in-process jobs (scheme ``"trusted"``)."""
        return cls(subject, "trusted", roles=roles)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Principal is read-only")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Principal):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash((self.subject, self.scheme, self.roles, self.key_id))

    def __reduce__(self) -> Any:
        return (_make_principal, (self.subject, self.scheme, tuple(sorted(self.roles)),
                                  tuple(sorted(self.scopes)), self.tenant, dict(self.claims),
                                  self.expires_at, self.key_id))

    def __repr__(self) -> str:
        return (f"Principal(subject={self.subject!r}, scheme={self.scheme!r}, "
                f"roles={sorted(self.roles)!r})")


def _make_principal(subject: str, scheme: str, roles: tuple[str, ...], scopes: tuple[str, ...],
                    tenant: str | None, claims: dict[str, Any], expires_at: float | None,
                    key_id: str | None) -> Principal:
    return Principal(subject, scheme, roles=roles, scopes=scopes, tenant=tenant, claims=claims,
                     expires_at=expires_at, key_id=key_id)


credentials: ContextVar[Credentials | None] = ContextVar("onex_credentials", default=None)
principal: ContextVar[Principal | None] = ContextVar("onex_principal", default=None)


def current_principal() -> Principal | None:
    """The principal of the current call (set by the authentication guard), or ``None``.

    Example:
        >>> current_principal() is None
        True
        >>> with PrincipalScope(Principal.system()):
        ...     current_principal().subject
        'system'
    """
    return principal.get()


_HEADER_SCHEMES = {"bearer": "bearer", "apikey": "api_key", "api-key": "api_key",
                   "api_key": "api_key"}


class _VarScope:
    """Sets a ContextVar on entry and resets it on exit; usable as ``with`` and ``async with``.

    Each entry pushes its own token, so one scope object may be entered again (nested or after
    it was left); the value is reset even when the block raises.
    """

    __slots__ = ("_tokens", "_value")
    _var: ContextVar[Any]

    def __init__(self, value: Any) -> None:
        self._value = value
        self._tokens: list[Any] = []

    def __enter__(self) -> Any:
        self._tokens.append(self._var.set(self._value))
        return self._value

    def __exit__(self, *exc: object) -> None:
        self._var.reset(self._tokens.pop())

    async def __aenter__(self) -> Any:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


class CredentialsScope(_VarScope):
    """``with`` / ``async with`` block presenting credentials for the calls made inside it.

    Exactly one of ``bearer`` (a JWT or a bearer API key), ``api_key`` or ``authorization`` (an
    HTTP ``Authorization`` header value such as ``"Bearer eyJ..."`` or ``"ApiKey onex_..."``)
    is given. ``node.credentials(...)`` returns one; transports build one from their headers.
    An ``Authorization`` value with another scheme is kept under that scheme (lower-cased), so
    authentication can reject it with a clear reason instead of the transport failing.

    Raises:
        ValueError: none or several of the three were given, or the value is empty. The
            message never contains the value.

    Example:
        >>> with CredentialsScope(authorization="Bearer abc.def.ghi") as c:
        ...     c, credentials.get() is c
        (Credentials(scheme='bearer', value=***), True)
        >>> credentials.get() is None
        True
    """

    __slots__ = ()
    _var = credentials

    def __init__(self, *, bearer: str | None = None, api_key: str | None = None,
                 authorization: str | None = None) -> None:
        given = [(n, v) for n, v in (("bearer", bearer), ("api_key", api_key),
                                      ("authorization", authorization)) if v is not None]
        if len(given) != 1:
            names = ", ".join(n for n, _ in given) or "none"
            raise ValueError("credentials(...) takes exactly one of bearer=, api_key= or "
                             f"authorization= (got: {names})")
        name, value = given[0]
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"credentials({name}=...) needs a non-empty string (the value is "
                             "not shown)")
        value = value.strip()
        if name == "authorization":
            scheme, _, rest = value.partition(" ")
            name = _HEADER_SCHEMES.get(scheme.lower(), scheme.lower())
            value = rest.strip()
            if not value:
                raise ValueError("credentials(authorization=...) expects '<scheme> <value>', "
                                 "such as 'Bearer <token>' (the value is not shown)")
        super().__init__(Credentials(name, value))


class PrincipalScope(_VarScope):
    """``with`` / ``async with`` block running as a given principal (trusted in-process code).

    ``node.authenticator.as_principal(Principal.system())`` returns one: calls made inside
    the block run as that principal without presenting credentials.
    """

    __slots__ = ()
    _var = principal

    def __init__(self, who: Principal) -> None:
        if not isinstance(who, Principal):
            raise TypeError(f"expected a Principal, got {type(who).__name__}")
        super().__init__(who)


class RetryScope:
    """What an active retry loop shares with the code it runs (the value of ``retry_scope``).

    Attributes:
        owner: the object running the loop (a ``RetryPolicy``).
        attempt: the attempt in progress, from 1.
        deadline: the loop's own budget end (absolute, on the loop's clock), or ``None``. Retry's
            ``max_elapsed`` sets it when the loop starts; the timeout capability's
            ``total_timeout`` lowers it on the first attempt.
        key: the id of the thread running the loop (``threading.get_ident()``), or ``None``;
            a copy of the context in another thread does not own the scope.
        active: ``True`` while the loop runs; the loop clears it when it ends, so a context
            copied into a task that outlives the loop carries an inactive scope.

    Example:
        >>> scope = RetryScope(owner=None)
        >>> scope.attempt, scope.deadline, scope.active
        (1, None, True)
    """

    __slots__ = ("active", "attempt", "deadline", "key", "owner")

    def __init__(self, owner: Any, deadline: float | None = None, key: object = None) -> None:
        self.owner = owner
        self.attempt = 1
        self.deadline = deadline
        self.key = key
        self.active = True

    def __repr__(self) -> str:
        return f"<RetryScope attempt={self.attempt} deadline={self.deadline}>"


def current_deadline() -> float | None:
    """The earliest of the enclosing deadline and the active retry loop's budget, or ``None``.

    Example:
        >>> token = deadline.set(10.0)
        >>> current_deadline()
        10.0
        >>> deadline.reset(token)
    """
    d = deadline.get()
    scope = retry_scope.get()
    if scope is not None and scope.active:  # a finished loop's budget binds nobody
        s = scope.deadline
        if s is not None and (d is None or s < d):
            return float(s)
    return d


def remaining(clock: Callable[[], float] = monotonic) -> float | None:
    """Seconds left before the current deadline (``None`` when there is none).

    Cooperative code (a sync function run in a thread by the timeout capability, for example)
    can poll it and stop early; the value is negative once the deadline has passed.
    """
    d = current_deadline()
    return None if d is None else d - clock()


class ManualClock:
    """A clock for tests: time moves only when told to.

    ``clock()`` reads it, :meth:`advance` moves it, :meth:`sleep` / :meth:`sleep_sync` are
    ``asyncio.sleep`` / ``time.sleep`` stand-ins that advance it instead of waiting (each delay
    is appended to :attr:`sleeps`), and :meth:`run` runs a coroutine on an event loop whose time
    is this clock.

    Example:
        >>> clock = ManualClock()
        >>> clock.advance(2.5)
        >>> clock()
        2.5
        >>> import asyncio
        >>> clock.run(asyncio.sleep(60))   # returns at once; the clock moved by 60 s
        >>> clock()
        62.5
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """An ``asyncio.sleep`` stand-in that advances the clock instead of waiting."""
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)

    def sleep_sync(self, seconds: float) -> None:
        """A ``time.sleep`` stand-in that advances the clock instead of waiting."""
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A new event loop whose ``time()`` is this clock and which skips idle waits.

        When the loop has nothing ready and would block until its next timer, the clock jumps to
        that timer instead. Real I/O and thread wake-ups still work (with nothing scheduled, the
        loop blocks in ``select`` as usual). Meant for tests only.
        """
        return _VirtualTimeLoop(self)

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """``asyncio.run(main)`` on a loop from :meth:`new_event_loop` (virtual time)."""
        with asyncio.Runner(loop_factory=self.new_event_loop) as runner:
            return runner.run(main)


class _VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on a :class:`ManualClock` (see :meth:`ManualClock.new_event_loop`)."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(selectors.DefaultSelector())
        self._onex_clock = clock
        selector = self._selector  # type: ignore[attr-defined]
        real_select = selector.select

        def select(timeout: float | None = None) -> list[Any]:
            if timeout is None or timeout <= 0:
                return real_select(timeout)  # type: ignore[no-any-return]
            events = real_select(0)
            if not events:
                clock.advance(timeout)  # jump to the next timer instead of waiting for it
            return events  # type: ignore[no-any-return]

        selector.select = select

    def time(self) -> float:
        return self._onex_clock.now
