"""The service_registry data model: config, entries, changes, errors and the Protocol."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from onex_compose._node_types import NODE_TYPE_NAMES, EnumNodeType
from onex_compose.capabilities._redis import check_redis_url
from onex_compose.exceptions import OnexError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

__all__ = [
    "CHANGE_KINDS",
    "STATUSES",
    "RegistryChange",
    "RegistryConflictError",
    "RegistryError",
    "RegistryInputError",
    "RegistryUnavailableError",
    "ServiceEntry",
    "ServiceRegistryConfig",
    "ServiceRegistryProtocol",
    "check_metadata",
    "check_node_type",
]

STATUSES = ("online", "offline", "left")
CHANGE_KINDS = ("registered", "updated", "offline", "online", "left", "purged")


# -- errors ----------------------------------------------------------------------------------


class RegistryError(OnexError):
    """Root of the service registry's errors."""

    onex_retriable = False
    onex_breaker_neutral = False


class RegistryConflictError(RegistryError, ValueError):
    """The instance id is held by another online instance (pass ``replace=True`` to take it
    over), or this instance's entry was taken over by another one."""

    onex_retriable = False
    onex_breaker_neutral = True


class RegistryUnavailableError(RegistryError, ConnectionError):
    """Redis cannot be reached (``discover`` / ``get`` / an explicit ``heartbeat``): retriable."""

    onex_retriable = True
    onex_breaker_neutral = False


class RegistryInputError(RegistryError, ValueError):
    """A bad argument: a metadata value that is not a string, an unknown node type, an id that
    names no entry or several."""

    onex_retriable = False
    onex_breaker_neutral = True


# -- input checks ----------------------------------------------------------------------------


def check_node_type(value: Any) -> str:
    """Normalise a node type: an :class:`EnumNodeType` or its name, case-insensitively.

    Example:
        >>> check_node_type("compute"), check_node_type(EnumNodeType.EFFECT)
        ('COMPUTE', 'EFFECT')
    """
    if isinstance(value, EnumNodeType):
        return value.value
    if isinstance(value, str) and value.upper() in NODE_TYPE_NAMES:
        return value.upper()
    raise RegistryInputError(
        f"unknown node_type {value!r}: use an EnumNodeType or one of "
        f"{', '.join(NODE_TYPE_NAMES)} (case-insensitive)")


def check_metadata(value: Any, what: str = "metadata") -> dict[str, str]:
    """Check a string -> string mapping (metadata values are strings: they are Redis hash data).

    Example:
        >>> check_metadata({"zone": "eu-1"})
        {'zone': 'eu-1'}
    """
    if not isinstance(value, Mapping):
        raise RegistryInputError(f"{what} must be a mapping of strings to strings, got {value!r}")
    bad = [f"{k!r}: {v!r}" for k, v in value.items()
           if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise RegistryInputError(
            f"{what} maps strings to strings; not strings: {', '.join(bad)} "
            "(convert the values with str(), e.g. {'port': '8080'})")
    return dict(value)


# -- configuration ---------------------------------------------------------------------------


class ServiceRegistryConfig(BaseModel):
    """The ``service_registry`` subcontract.

    Example:
        >>> cfg = ServiceRegistryConfig(ttl=9)
        >>> cfg.interval
        3.0
        >>> try:
        ...     ServiceRegistryConfig(metadata={"port": 8080})
        ... except ValueError as exc:
        ...     print("not strings: 'port': 8080" in str(exc))
        True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["memory", "redis"] = Field(
        default="memory", description="memory: process-wide per namespace; redis: a fleet")
    redis_url: str | None = Field(
        default=None, description="None: ONEX_REDIS_URL, else redis://127.0.0.1:6379/0")
    namespace: str = Field(default="onex", min_length=1,
                           description="who sees whom; Redis key prefix")
    ttl: float = Field(default=15.0, gt=0,
                       description="seconds an entry stays online after its last heartbeat")
    heartbeat_interval: float | None = Field(
        default=None, gt=0, description="seconds between heartbeats; None: ttl / 3")
    purge_after: float = Field(default=3600.0, ge=0,
                               description="offline and left entries are removed after this")
    auto_register: bool = Field(default=True,
                                description="register at start(), status left at aclose()")
    instance_id: str | None = Field(
        default=None, description="the fleet-unique registry key; None: <host>:<pid>:<node_id>")
    name: str | None = Field(default=None, description="service name; None: the class name")
    address: str | None = Field(default=None, description="where the service is reached")
    version: str | None = Field(default=None, description="the service's version")
    domain: str | None = Field(default=None, description="the service's domain (a filter)")
    metadata: dict[str, str] = Field(default_factory=dict, description="string -> string")
    publish_changes: bool = Field(
        default=True, description="with event_bus composed: changes on service_registry.changed")
    redis_clock: Literal["server", "client"] = Field(
        default="server", description="server: Redis TIME for every process; client: the "
                                      "facility's clock")
    redis_timeout: float = Field(default=1.0, gt=0, description="Redis connect/command timeout")

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        checked: str | None = check_redis_url(value)
        return checked

    @field_validator("namespace", "instance_id")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() for c in value) or "*" in value):
            raise ValueError(f"must be non-empty without whitespace or '*', got {value!r}")
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _check_metadata(cls, value: Any) -> Any:
        try:
            return check_metadata(value)
        except RegistryInputError as exc:
            raise ValueError(str(exc)) from None

    @property
    def interval(self) -> float:
        """The effective heartbeat interval (``heartbeat_interval`` or ``ttl / 3``)."""
        return self.heartbeat_interval if self.heartbeat_interval is not None else self.ttl / 3


# -- entries and changes ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """One registered service instance.

    Attributes:
        node_id: the node's own id (``Pricer-1``; not unique across processes).
        instance_id: the fleet-unique registry key (default ``<host>:<pid>:<node_id>``).
        instance: a random token per node object: who holds ``instance_id``.
        name: the service name (default: the class name).
        node_type: ``COMPUTE`` / ``EFFECT`` / ``REDUCER`` / ``ORCHESTRATOR`` (or ``None``).
        capabilities: the node's capabilities (canonical names).
        address, version, domain: as configured (or ``None``).
        metadata: string -> string.
        status: ``online``, ``offline`` or ``left``, as of the read.
        registered_at, last_heartbeat, expires_at: seconds on the registry clock.

    Example:
        >>> e = ServiceEntry("n-1", "h:1:n-1", "tok", "Svc", "COMPUTE", ("metrics",), None, {},
        ...                  None, None, "online", 0.0, 0.0, 15.0)
        >>> e
        <ServiceEntry h:1:n-1 Svc COMPUTE online expires_at=15.0>
    """

    node_id: str
    instance_id: str
    instance: str
    name: str
    node_type: str | None
    capabilities: tuple[str, ...]
    address: str | None
    metadata: Mapping[str, str]
    version: str | None
    domain: str | None
    status: str
    registered_at: float
    last_heartbeat: float
    expires_at: float

    def __repr__(self) -> str:
        return (f"<ServiceEntry {self.instance_id} {self.name} {self.node_type or '-'} "
                f"{self.status} expires_at={self.expires_at}>")

    @property
    def online(self) -> bool:
        """Whether the entry was online when read."""
        return self.status == "online"

    def at(self, now: float) -> ServiceEntry:
        """This entry with its status as of ``now`` (online only while ``now < expires_at``)."""
        status = self.status
        if status == "online" and now >= self.expires_at:
            return replace(self, status="offline")
        return self

    def _renewed(self, last_heartbeat: float, expires_at: float) -> ServiceEntry:
        """A copy, online, with new heartbeat times (the heartbeat's hot path: a slot copy
        instead of ``dataclasses.replace``)."""
        new = object.__new__(ServiceEntry)
        for name in _SLOTS:
            object.__setattr__(new, name, getattr(self, name))
        object.__setattr__(new, "status", "online")
        object.__setattr__(new, "last_heartbeat", last_heartbeat)
        object.__setattr__(new, "expires_at", expires_at)
        return new

    def to_fields(self) -> dict[str, str]:
        """The Redis hash fields (all strings)."""
        return {
            "node_id": self.node_id, "instance_id": self.instance_id, "instance": self.instance,
            "data": json.dumps({"name": self.name, "node_type": self.node_type,
                                "capabilities": list(self.capabilities),
                                "address": self.address, "metadata": dict(self.metadata),
                                "version": self.version, "domain": self.domain}),
            "caps": " ".join(self.capabilities), "status": self.status,
            "registered_at": repr(self.registered_at),
            "last_heartbeat": repr(self.last_heartbeat), "expires_at": repr(self.expires_at),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> ServiceEntry:
        """Rebuild an entry from Redis hash fields (bytes or str keys and values)."""
        f = {_s(k): _s(v) for k, v in fields.items()}
        data = json.loads(f.get("data") or "{}")
        return cls(node_id=f["node_id"], instance_id=f["instance_id"], instance=f["instance"],
                   name=data.get("name") or f["node_id"], node_type=data.get("node_type"),
                   capabilities=tuple(data.get("capabilities") or ()),
                   address=data.get("address"), metadata=dict(data.get("metadata") or {}),
                   version=data.get("version"), domain=data.get("domain"),
                   status=f.get("status", "offline"),
                   registered_at=float(f.get("registered_at", 0)),
                   last_heartbeat=float(f.get("last_heartbeat", 0)),
                   expires_at=float(f.get("expires_at", 0)))

    def as_event(self) -> dict[str, Any]:
        """The entry as plain data (event payloads)."""
        return {"node_id": self.node_id, "instance_id": self.instance_id, "name": self.name,
                "node_type": self.node_type, "capabilities": list(self.capabilities),
                "address": self.address, "metadata": dict(self.metadata),
                "version": self.version, "domain": self.domain, "status": self.status,
                "registered_at": self.registered_at, "last_heartbeat": self.last_heartbeat,
                "expires_at": self.expires_at}


_SLOTS = ("node_id", "instance_id", "instance", "name", "node_type", "capabilities", "address",
          "metadata", "version", "domain", "registered_at")


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """A change of one entry, as watchers receive it.

    Attributes:
        kind: ``registered``, ``updated``, ``offline``, ``online``, ``left`` or ``purged``.
        entry: the entry after the change (for ``purged``: as it was when removed).
    """

    kind: str
    entry: ServiceEntry

    def __repr__(self) -> str:
        return f"<RegistryChange {self.kind} {self.entry.instance_id}>"

    def as_event(self) -> dict[str, Any]:
        """The payload published on the event bus topic ``service_registry.changed``."""
        return {"kind": self.kind, "instance_id": self.entry.instance_id,
                "node_id": self.entry.node_id, "entry": self.entry.as_event()}


@runtime_checkable
class ServiceRegistryProtocol(Protocol):
    """What nodes call on ``self.service_registry``."""

    async def register(self, *, replace: bool = False) -> ServiceEntry: ...

    async def heartbeat(self) -> ServiceEntry: ...

    async def deregister(self) -> None: ...

    async def discover(self, capability: str | None = None, node_type: Any = None,
                       name: str | None = None, domain: str | None = None,
                       metadata: Mapping[str, str] | None = None,
                       include_offline: bool = False) -> list[ServiceEntry]: ...

    async def get(self, node_id: str) -> ServiceEntry: ...

    def watch(self, callback: Callable[[RegistryChange], Any]) -> Any: ...

    def changes(self) -> AsyncIterator[RegistryChange]: ...

    async def sweep(self) -> list[RegistryChange]: ...
