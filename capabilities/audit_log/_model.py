"""The audit_log capability's configuration, records, reports, errors and protocol."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from onex_compose._redact import DEFAULT_EXACT_KEYS, DEFAULT_KEYS
from onex_compose.exceptions import OnexError

__all__ = [
    "HMAC_KEY_ENV",
    "OUTCOMES",
    "PROBLEMS",
    "Anchor",
    "AuditLogConfig",
    "AuditLogProtocol",
    "AuditRecord",
    "AuditUnavailableError",
    "AuditWriteError",
    "VerifyReport",
]

HMAC_KEY_ENV = "ONEX_AUDIT_HMAC_KEY"
"""The environment variable read for the HMAC key when ``hmac_key`` is not configured."""

OUTCOMES = ("success", "failure", "denied", "rejected", "error", "started")
"""The outcomes a record may carry."""

PROBLEMS = ("edited", "deleted", "inserted", "reordered", "truncated", "bad_genesis")
"""What :class:`VerifyReport.problem` may name."""

Outcome = Literal["success", "failure", "denied", "rejected", "error", "started"]
Problem = Literal["edited", "deleted", "inserted", "reordered", "truncated", "bad_genesis"]

_CHAIN_ID = re.compile(r"^[A-Za-z0-9_.:\-/]{1,200}$")


class AuditLogConfig(BaseModel):
    """The ``audit_log`` subcontract (every key of ``audit_log_config`` in ``mixin_audit_log.yaml``).

    Example:
        >>> AuditLogConfig().anchor_every, AuditLogConfig().on_write_error
        (1000, 'raise')
        >>> AuditLogConfig(hmac_key="k3y")
        AuditLogConfig(chain_id='default', hmac_key=SecretStr('**********'), ...)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    chain_id: str = Field(default="default",
                          description="independent chains share the table")
    hmac_key: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key of the chain (env ONEX_AUDIT_HMAC_KEY); "
                                  "makes whole-table recomputation detectable")
    require_hmac: bool = Field(default=False, description="setup fails without a key")
    audit_process: bool = Field(default=True,
                                description="the guard records every process() call")
    action_from_input: str | None = Field(
        default=None, min_length=1,
        description="dotted path into process()'s input naming the action (default 'process')")
    record_input_digest: bool = Field(
        default=True, description="store sha256(canonical(input)), never the input itself")
    intent_records: bool = Field(
        default=False, description="write a 'started' record before the call; if that write "
                                   "fails the call is refused and never runs")
    on_write_error: Literal["raise", "log"] = Field(
        default="raise", description="after-call record failed: raise AuditWriteError (health "
                                     "unhealthy) or log it (health degraded)")
    scrub_keys: list[str] = Field(
        default_factory=lambda: [*DEFAULT_KEYS, *DEFAULT_EXACT_KEYS],
        description="keys whose values are redacted in details before hashing (key-name "
                    "fragments; the shared scrubber's defaults)")
    anchor_every: int = Field(default=1000, ge=0,
                              description="emit an anchor every N records (0: never)")
    anchor_sink: str = Field(default="log",
                             description="log | event_bus (topic audit.anchor) | file:<path>")

    @field_validator("chain_id")
    @classmethod
    def _check_chain_id(cls, value: str) -> str:
        if not _CHAIN_ID.match(value):
            raise ValueError(f"chain_id must be 1-200 characters of letters, digits and "
                             f"'_.:-/', got {value!r}")
        return value

    @field_validator("anchor_sink")
    @classmethod
    def _check_sink(cls, value: str) -> str:
        if value in ("log", "event_bus") or (value.startswith("file:") and len(value) > 5):
            return value
        raise ValueError(f"anchor_sink must be 'log', 'event_bus' or 'file:<path>', got "
                         f"{value!r}")

    @field_validator("action_from_input")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        if value is not None and any(not part for part in value.split(".")):
            raise ValueError(f"action_from_input must be a dotted path such as 'action' or "
                             f"'request.kind', got {value!r}")
        return value

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k != "scrub_keys")
        return f"AuditLogConfig({fields}, ...)"

    __str__ = __repr__


# -- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRecord:
    """One record of the chain, as stored in ``<namespace>_audit_log``.

    ``hash = H(prev_hash ‖ canonical_json(record without hash))``, ``H`` being HMAC-SHA256 with
    the chain's key, else SHA-256 (see :mod:`onex_compose.capabilities.audit_log`).

    Example:
        >>> r = AuditRecord(seq=1, chain_id="default", id="0" * 32,
        ...                 at="2026-01-02T03:04:05.000006Z", actor="alice", actor_scheme="jwt",
        ...                 action="refund", resource="order:42", outcome="success",
        ...                 prev_hash="a" * 64, hash="b" * 64)
        >>> r
        AuditRecord(seq=1, chain='default', actor='alice', action='refund', outcome='success')
        >>> sorted(r.to_dict())[:3]
        ['action', 'actor', 'actor_scheme']
    """

    seq: int
    chain_id: str
    id: str
    at: str
    action: str
    outcome: str
    prev_hash: str
    hash: str
    actor: str | None = None
    actor_scheme: str | None = None
    resource: str | None = None
    reason: str | None = None
    node_id: str | None = None
    correlation_id: str | None = None
    trace_id: str | None = None
    details: Mapping[str, Any] | None = field(default=None, compare=True)

    def to_dict(self) -> dict[str, Any]:
        """Every field (``details`` as a plain dict), as exported."""
        out = asdict(self)
        if self.details is not None:
            out["details"] = dict(self.details)
        return out

    def __repr__(self) -> str:
        return (f"AuditRecord(seq={self.seq}, chain={self.chain_id!r}, actor={self.actor!r}, "
                f"action={self.action!r}, outcome={self.outcome!r})")


@dataclass(frozen=True)
class Anchor:
    """External evidence of a chain's state: its head ``seq`` and ``hash`` at time ``at``.

    Anchors leave the database (a log line, an event, a file): a tail cut or a whole-table
    rewrite made after an anchor is detected by ``verify(anchors=[...])``.

    Example:
        >>> a = Anchor("default", 1000, "ab" * 32, "2026-01-02T03:04:05.000000Z")
        >>> Anchor.from_dict(a.to_dict()) == a
        True
    """

    chain_id: str
    seq: int
    hash: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "seq": self.seq, "hash": self.hash, "at": self.at}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Anchor:
        """An anchor from its dict form (``TypeError``/``ValueError`` naming what is wrong)."""
        try:
            seq = data["seq"]
            if not isinstance(seq, int) or isinstance(seq, bool):
                raise ValueError(f"anchor seq must be an integer, got {seq!r}")
            return cls(str(data["chain_id"]), seq, str(data["hash"]), str(data.get("at", "")))
        except KeyError as exc:
            raise ValueError(f"anchor lacks the field {exc.args[0]!r} (needs chain_id, seq, "
                             "hash, at)") from None


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`AuditLog.verify` found. It never raises on tampering: it reports it.

    Attributes:
        ok: ``True`` when every checked record and every anchor agree.
        checked: how many records were checked.
        first_bad_seq: the first affected seq, or ``None``.
        problem: ``None`` or one of ``edited``, ``deleted``, ``inserted``, ``reordered``,
            ``truncated``, ``bad_genesis``.
        detail: a sentence for humans.
        chain_id: the chain verified.
        last_seq: the last seq checked (``0`` when none).

    Example:
        >>> VerifyReport(True, 10, None, None, "10 records verified")
        VerifyReport(ok=True, checked=10, first_bad_seq=None, problem=None, detail='10 records verified')
    """

    ok: bool
    checked: int
    first_bad_seq: int | None
    problem: str | None
    detail: str
    chain_id: str = "default"
    last_seq: int = 0

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __repr__(self) -> str:
        return (f"VerifyReport(ok={self.ok}, checked={self.checked}, first_bad_seq="
                f"{self.first_bad_seq}, problem={self.problem!r}, detail={self.detail!r})")


# -- errors ------------------------------------------------------------------------------------


class AuditWriteError(OnexError, RuntimeError):
    """An audit record could not be written.

    From the ``process()`` guard (``on_write_error: raise``) it means *the operation ran* but
    was not audited: ``.result`` holds what it returned (``.operation_error`` what it raised).

    Attributes:
        action: the record's action.
        outcome: the record's outcome.
        result: the operation's return value (guard only; ``None`` otherwise).
        operation_error: the exception the operation raised (guard only), or ``None``.
    """

    onex_retriable = False
    onex_breaker_neutral = True

    def __init__(self, message: str, *, action: str | None = None, outcome: str | None = None,
                 result: Any = None, operation_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.action = action
        self.outcome = outcome
        self.result = result
        self.operation_error = operation_error


class AuditUnavailableError(AuditWriteError):
    """``intent_records``: the ``started`` record could not be written, so the call was refused
    and never ran ("nothing runs unaudited"). Retriable."""

    onex_retriable = True


# -- protocol ----------------------------------------------------------------------------------


@runtime_checkable
class AuditLogProtocol(Protocol):
    """What ``self.audit`` offers (the contract's actions)."""

    async def record(self, action: str, *, resource: str | None = None, outcome: str,
                     reason: str | None = None, details: Mapping[str, Any] | None = None,
                     actor: Any = None) -> AuditRecord: ...

    def record_sync(self, action: str, *, resource: str | None = None, outcome: str,
                    reason: str | None = None, details: Mapping[str, Any] | None = None,
                    actor: Any = None) -> AuditRecord: ...

    async def verify(self, chain_id: str | None = None, start_seq: int = 1,
                     end_seq: int | None = None,
                     anchors: Iterable[Anchor | Mapping[str, Any]] | str | None = None
                     ) -> VerifyReport: ...

    def query(self, *, actor: str | None = None, action: str | None = None,
              outcome: str | None = None, since: Any = None, until: Any = None,
              limit: int = 1000) -> AsyncIterator[AuditRecord]: ...

    async def anchor(self) -> Anchor: ...

    async def export(self, path: str) -> Anchor: ...
