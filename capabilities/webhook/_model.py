"""The webhook capability's configuration, records, errors and protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from onex_compose import __version__
from onex_compose.exceptions import OnexError

__all__ = [
    "DELIVERY_STATUSES",
    "TARGET_REASONS",
    "VERIFY_REASONS",
    "Delivery",
    "WebhookConfig",
    "WebhookError",
    "WebhookNotFoundError",
    "WebhookPayloadTooLargeError",
    "WebhookProtocol",
    "WebhookSubscription",
    "WebhookTargetError",
    "WebhookVerificationError",
]

DELIVERY_STATUSES = ("pending", "delivered", "failed", "dead")
"""A delivery is ``pending`` until it is ``delivered``, ``failed`` at once (a 4xx other than
408/429, a 3xx, a refused target, a disabled subscription) or ``dead`` (retries exhausted)."""

TARGET_REASONS = ("private_address", "scheme", "port", "host_not_allowed", "userinfo",
                  "unresolvable")
"""The reasons :class:`WebhookTargetError` may carry."""

VERIFY_REASONS = ("missing_headers", "expired", "future", "bad_signature", "replayed",
                  "malformed")
"""The reasons :class:`WebhookVerificationError` may carry."""


class WebhookConfig(BaseModel):
    """The ``webhook`` subcontract (every key of ``webhook_config`` in ``mixin_webhook.yaml``).

    Example:
        >>> WebhookConfig().retry_schedule
        [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0]
        >>> WebhookConfig(allowed_hosts=["*.example.com"]).allow_http
        False
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float = Field(default=10.0, gt=0, description="seconds per attempt (read, write, pool)")
    connect_timeout: float = Field(default=5.0, gt=0, description="seconds to connect, per attempt")
    retry_schedule: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0],
        description="seconds after the previous attempt; its length is the number of retries")
    jitter: float = Field(default=0.2, ge=0, lt=1, description="each delay is scaled by 1 ± jitter")
    max_retry_after: float = Field(default=3600.0, ge=0, description="an honoured Retry-After is capped")
    disable_after_failed_deliveries: int = Field(
        default=5, ge=1, description="consecutive exhausted deliveries before the subscription is disabled")
    max_payload_bytes: int = Field(default=1_048_576, ge=1)
    max_response_bytes: int = Field(default=65_536, ge=0)
    allow_http: bool = False
    allow_private_networks: bool = False
    allowed_hosts: list[str] = Field(default_factory=list)
    allowed_ports: list[int] | None = None
    verify_tolerance: float = Field(default=300.0, ge=0)
    replay_window: float = Field(default=600.0, ge=0)
    replay_store: Literal["memory", "redis", "database"] = "memory"
    redis_url: str | None = Field(default=None, description="replay_store redis; None: ONEX_REDIS_URL")
    namespace: str = Field(default="onex", min_length=1, description="redis key prefix of the replay store")
    workers: int = Field(default=4, ge=1)
    user_agent: str = f"onex-compose-webhooks/{__version__}"
    health_max_age: float = Field(default=300.0, gt=0,
                                  description="the oldest due delivery older than this -> degraded")

    @field_validator("retry_schedule")
    @classmethod
    def _check_schedule(cls, value: list[float]) -> list[float]:
        if any(v < 0 for v in value):
            raise ValueError(f"retry_schedule delays must be >= 0 seconds, got {value}")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        out = []
        for host in value:
            h = host.strip().lower().rstrip(".")
            if not h or (h.startswith("*") and not h.startswith("*.")) or "*" in h[1:]:
                raise ValueError(f"allowed_hosts entries are exact hosts or '*.suffix', got {host!r}")
            out.append(h)
        return out

    @field_validator("allowed_ports")
    @classmethod
    def _check_ports(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(not 0 < p < 65536 for p in value):
            raise ValueError(f"allowed_ports must be between 1 and 65535, got {value}")
        return value


# -- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookSubscription:
    """A subscription. ``secret`` is returned once, by ``subscribe`` (elsewhere ``None``).

    Example:
        >>> sub = WebhookSubscription("s1", "https://x.test/h", ("a.*",), "whsec_AAAA", True)
        >>> "whsec" in repr(sub), repr(sub)[:48]
        (False, "WebhookSubscription(id='s1', url='https://x.test")
    """

    id: str
    url: str
    events: tuple[str, ...]
    secret: str | None = field(default=None, repr=False)
    active: bool = True
    description: str = ""

    def __repr__(self) -> str:
        secret = "***" if self.secret else None
        return (f"WebhookSubscription(id={self.id!r}, url={self.url!r}, events={self.events!r}, "
                f"secret={secret}, active={self.active!r}, description={self.description!r})")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (the secret masked)."""
        out = asdict(self)
        out["secret"] = "***" if self.secret else None
        out["events"] = list(self.events)
        return out


@dataclass(frozen=True)
class Delivery:
    """One outbox row: one event for one subscription, attempted until it ends.

    ``msg_id`` is the ``webhook-id`` header, stable across retries (receivers deduplicate on it).
    """

    id: str
    msg_id: str
    subscription_id: str
    event_type: str
    attempts: int
    status: str
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: float | None
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- errors ------------------------------------------------------------------------------------


class WebhookError(OnexError):
    """Root of the webhook capability's errors."""

    onex_retriable = False


class WebhookTargetError(WebhookError, ValueError):
    """A target URL refused by the SSRF policy; ``reason`` is one of :data:`TARGET_REASONS`.

    ``unresolvable`` is retriable (DNS may recover); every other reason is final.

    Example:
        >>> err = WebhookTargetError("no", reason="scheme", url="ftp://x")
        >>> err.reason, err.onex_retriable
        ('scheme', False)
    """

    onex_breaker_neutral = True

    def __init__(self, message: str, *, reason: str, url: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.url = url
        self.onex_retriable = reason == "unresolvable"


class WebhookVerificationError(WebhookError, PermissionError):
    """An incoming request failed verification; ``reason`` is one of :data:`VERIFY_REASONS`."""

    onex_breaker_neutral = True

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class WebhookPayloadTooLargeError(WebhookError, ValueError):
    """``publish`` got a payload whose request body exceeds ``max_payload_bytes``."""

    onex_breaker_neutral = True

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class WebhookNotFoundError(WebhookError, KeyError):
    """An unknown subscription or delivery id."""

    onex_breaker_neutral = True

    def __init__(self, message: str, *, id: str) -> None:
        super().__init__(message)
        self.id = id

    def __str__(self) -> str:  # KeyError quotes its argument; keep the sentence readable
        return str(self.args[0]) if self.args else ""


# -- protocol ----------------------------------------------------------------------------------

Handler = Callable[..., Awaitable[Any] | Any]


@runtime_checkable
class WebhookProtocol(Protocol):
    """What ``self.webhooks`` offers (the contract's actions)."""

    async def subscribe(self, url: str, events: Sequence[str], secret: str | None = None,
                        description: str = "") -> WebhookSubscription: ...

    async def publish(self, event_type: str, data: Any, idempotency_key: str | None = None
                      ) -> list[str]: ...

    async def deliveries(self, subscription_id: str | None = None, status: str | None = None,
                         limit: int = 100) -> list[Delivery]: ...

    def verify(self, body: bytes | str, headers: Mapping[str, str], secret: str | None = None
               ) -> Any: ...

    async def rotate_secret(self, subscription_id: str, overlap: float = 86400) -> str: ...
