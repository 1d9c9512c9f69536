"""The notification capability's data: config, notifications, results and errors."""

from __future__ import annotations

import functools
import re
import zoneinfo
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from onex_compose import OnexError
from onex_compose.capabilities._redis import check_redis_url
from onex_compose.exceptions import did_you_mean

__all__ = [
    "SEVERITIES",
    "ChannelLimit",
    "Escalation",
    "Notification",
    "NotificationConfig",
    "NotificationDeliveryError",
    "NotificationError",
    "NotificationProtocol",
    "NotificationResult",
    "QuietHours",
    "Route",
    "RouteMatch",
    "severity_rank",
]

Severity = Literal["debug", "info", "warning", "error", "critical"]
SEVERITIES: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
"""Severities in order: ``debug < info < warning < error < critical``."""
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


def severity_rank(severity: str) -> int:
    """The position of ``severity`` in :data:`SEVERITIES`.

    Example:
        >>> severity_rank("warning") > severity_rank("info")
        True

    Raises:
        NotificationError: an unknown severity (with a did-you-mean hint).
    """
    try:
        return _RANK[severity]
    except (KeyError, TypeError):
        raise NotificationError(
            f"unknown severity {severity!r}{did_you_mean(severity, SEVERITIES)}; "
            f"use one of {', '.join(SEVERITIES)}") from None


class NotificationError(OnexError, ValueError):
    """A notification could not be built or routed (bad severity, unknown channel).

    Example:
        >>> NotificationError("unknown channel 'pagr'").onex_retriable
        False
    """

    onex_retriable = False
    onex_breaker_neutral = True


class NotificationDeliveryError(NotificationError):
    """Every channel of a ``raise_on_failure`` notification failed.

    Attributes:
        notification_id: the notification's id.
        errors: channel name to its error text (never containing a secret).

    Example:
        >>> err = NotificationDeliveryError("n1", {"email": "ConnectionRefusedError: ..."})
        >>> err.errors["email"].split(":")[0], err.onex_retriable
        ('ConnectionRefusedError', True)
    """

    onex_retriable = True
    onex_breaker_neutral = False

    def __init__(self, notification_id: str, errors: dict[str, str]) -> None:
        self.notification_id = notification_id
        self.errors = dict(errors)
        detail = "; ".join(f"{k}: {v}" for k, v in self.errors.items())
        super().__init__(f"notification {notification_id} was not delivered by any channel "
                         f"({detail}). Check the channels' configuration and reachability, or "
                         "call notify() without raise_on_failure to get the per-channel result.")

    def __reduce__(self) -> Any:
        return (NotificationDeliveryError, (self.notification_id, self.errors))


# ---------------------------------------------------------------------------- channels

class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogChannel(_Channel):
    """``{type: log, level}``: a log line at ``level`` (default: the notification's severity)."""

    type: Literal["log"] = "log"
    level: Literal["debug", "info", "warning", "error", "critical"] | None = None


class EventBusChannel(_Channel):
    """``{type: event_bus, topic}``: an event (requires the event_bus capability)."""

    type: Literal["event_bus"]
    topic: str = Field(default="notifications.{severity}", min_length=1,
                       description="{severity} is replaced by the notification's severity")


class WebhookChannel(_Channel):
    """``{type: webhook, url, secret}``: a Standard Webhooks signed POST, SSRF-checked."""

    type: Literal["webhook"]
    url: str = Field(min_length=1)
    secret: SecretStr | None = None
    allow_http: bool = False
    allow_private_networks: bool = False
    allowed_hosts: tuple[str, ...] = ()


class EmailChannel(_Channel):
    """``{type: email, host, port, ..., to}``: a mail through SMTP (aiosmtplib)."""

    type: Literal["email"]
    host: str = "localhost"
    port: int = Field(default=25, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    use_tls: bool = False
    from_addr: str = "onex@localhost"
    to: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_to(self) -> EmailChannel:
        if not self.to:
            raise ValueError("an email channel needs at least one recipient in 'to' "
                             "(e.g. to: ['ops@example.com'])")
        return self


class CallbackChannel(_Channel):
    """``{type: callback, name}``: a function registered with ``@notifier.channel(name)``
    (``name`` defaults to the channel's own name)."""

    type: Literal["callback"]
    name: str | None = None


ChannelConfig = Annotated[LogChannel | EventBusChannel | WebhookChannel | EmailChannel
                          | CallbackChannel, Field(discriminator="type")]


# ---------------------------------------------------------------------------- routing etc.

class RouteMatch(BaseModel):
    """What a route matches; every given condition must hold (an empty match matches all)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_severity: Severity | None = None
    severities: tuple[Severity, ...] | None = None
    tags_any: tuple[str, ...] | None = None
    tags_all: tuple[str, ...] | None = None
    title_regex: str | None = None

    @field_validator("title_regex")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"title_regex {value!r} is not a valid regex: {exc}") from None
        return value

    def matches(self, severity: str, title: str, tags: tuple[str, ...]) -> bool:
        """Whether a notification with these fields matches."""
        if self.min_severity is not None and _RANK[severity] < _RANK[self.min_severity]:
            return False
        if self.severities is not None and severity not in self.severities:
            return False
        if self.tags_any is not None and not set(self.tags_any) & set(tags):
            return False
        if self.tags_all is not None and not set(self.tags_all) <= set(tags):
            return False
        return self.title_regex is None or _compiled(self.title_regex).search(title) is not None


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


class Route(BaseModel):
    """One routing rule: matching notifications go to ``channels``; ``stop`` ends routing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: RouteMatch = Field(default_factory=RouteMatch)
    channels: tuple[str, ...] = Field(min_length=1)
    stop: bool = True


class ChannelLimit(BaseModel):
    """``limit`` notifications per ``period`` seconds, ``burst`` at once (GCRA)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(ge=1)
    period: float = Field(default=60.0, gt=0)
    burst: int | None = Field(default=None, ge=1)


_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class QuietHours(BaseModel):
    """Quiet hours in ``timezone``: below ``min_severity`` notifications are deferred (one
    digest at the end) or dropped. ``start`` > ``end`` spans midnight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str
    end: str
    timezone: str = "UTC"
    min_severity: Severity = "critical"
    mode: Literal["defer", "drop"] = "defer"

    @field_validator("start", "end")
    @classmethod
    def _check_time(cls, value: str) -> str:
        if not isinstance(value, str) or not _HHMM.match(value):
            raise ValueError(f"{value!r} is not a time of day as HH:MM (e.g. '22:00')")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}; use an IANA name such as "
                             "'Europe/Berlin' or 'UTC'") from None
        return value

    def minutes(self, which: str) -> int:
        hh, mm = getattr(self, which).split(":")
        return int(hh) * 60 + int(mm)


class Escalation(BaseModel):
    """Unacknowledged notifications of ``min_severity`` or above go to ``channels`` too after
    ``after`` seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    after: float = Field(default=900.0, gt=0)
    channels: tuple[str, ...] = Field(min_length=1)
    min_severity: Severity = "error"


def _default_channels() -> dict[str, ChannelConfig]:
    return {"log": LogChannel()}


class NotificationConfig(BaseModel):
    """The notification subcontract (every key of ``notification_config``).

    Example:
        >>> cfg = NotificationConfig(channels={"log": {"type": "log"},
        ...                                    "pager": {"type": "callback"}},
        ...                          routes=[{"match": {"min_severity": "error"},
        ...                                   "channels": ["pager"]}])
        >>> cfg.routes[0].channels
        ('pager',)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: dict[str, ChannelConfig] = Field(default_factory=lambda: _default_channels())
    routes: tuple[Route, ...] = ()
    default_channels: tuple[str, ...] = ("log",)
    dedup_window: float = Field(default=300.0, ge=0)
    channel_limits: dict[str, ChannelLimit] = Field(default_factory=dict)
    quiet_hours: QuietHours | None = None
    escalation: Escalation | None = None
    subscribe_events: dict[str, Severity] = Field(default_factory=dict)
    send_timeout: float = Field(default=10.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    namespace: str = Field(default="onex", min_length=1)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        checked: str | None = check_redis_url(value)
        return checked

    @model_validator(mode="after")
    def _check_channels(self) -> NotificationConfig:
        known = list(self.channels)

        def check(name: str, where: str) -> None:
            if name not in self.channels:
                raise ValueError(
                    f"{where} names unknown channel {name!r}{did_you_mean(name, known)}; "
                    f"configured channels: {', '.join(known) or '(none)'}")

        for i, route in enumerate(self.routes):
            for ch in route.channels:
                check(ch, f"routes[{i}]")
        for ch in self.default_channels:
            check(ch, "default_channels")
        for ch in self.channel_limits:
            check(ch, "channel_limits")
        if self.escalation is not None:
            for ch in self.escalation.channels:
                check(ch, "escalation")
        return self


# ---------------------------------------------------------------------------- values

@dataclass(slots=True)
class Notification:
    """One notification, as channels receive it (treat it as read-only: every channel gets
    the same object; not frozen because a frozen dataclass costs ~2 µs more per notify).

    Attributes:
        id: unique (hex).
        title / message / severity / tags / data: what ``notify`` was given.
        dedup_key: the deduplication key (given or derived).
        timestamp: the notifier's clock at ``notify`` (seconds since the epoch).
        repeats: duplicates suppressed since the last delivered one.
        source: the node id.
        kind: ``notification``, ``digest``, ``escalation`` or ``test``.
    """

    id: str
    title: str
    message: str
    severity: str
    tags: tuple[str, ...] = ()
    data: Any = None
    dedup_key: str = ""
    timestamp: float = 0.0
    repeats: int = 0
    source: str | None = None
    kind: str = "notification"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for webhooks and events)."""
        return {"id": self.id, "title": self.title, "message": self.message,
                "severity": self.severity, "tags": list(self.tags), "data": self.data,
                "dedup_key": self.dedup_key, "timestamp": self.timestamp,
                "repeats": self.repeats, "source": self.source, "kind": self.kind}


@dataclass
class NotificationResult:
    """What ``notify`` did.

    Attributes:
        id: the notification's id (for ``acknowledge``).
        channels: channel name to ``sent``, ``rate_limited`` or ``failed: <error>``.
        suppressed: ``None`` (sent), ``duplicate``, ``quiet_hours`` or ``rate_limited``.
        repeats: duplicates suppressed before this one.
    """

    id: str
    channels: dict[str, str] = field(default_factory=dict)
    suppressed: str | None = None
    repeats: int = 0

    @property
    def delivered(self) -> bool:
        """Whether at least one channel sent it."""
        return any(v == "sent" for v in self.channels.values())


@runtime_checkable
class NotificationProtocol(Protocol):
    """What the notification capability adds to a node (the ``notifier`` facility)."""

    @property
    def notifier(self) -> Any: ...
