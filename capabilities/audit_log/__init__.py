"""audit_log: an append-only, tamper-evident record of who did what, when, with what outcome.

``self.audit`` is an :class:`AuditLog` storing through the ``database`` capability in
``<namespace>_audit_log``. Every record is hash-chained to the one before it:

* ``hash = H(prev_hash ‖ canonical_json(record without hash))``; ``H`` is HMAC-SHA256 when
  ``hmac_key`` (or ``ONEX_AUDIT_HMAC_KEY``) is set, else SHA-256; the first ``prev_hash`` is
  ``H("onex-audit-genesis:" + chain_id)``. ``canonical_json`` is RFC 8785, the canonical JSON
  of ``serialization.canonical()``.
* A record holds ``seq`` (gap-free per chain, assigned under the chain lock), ``chain_id``,
  ``id`` (uuid hex), ``at`` (UTC ISO 8601 with microseconds), ``actor``, ``actor_scheme``,
  ``action``, ``resource``, ``outcome`` (``success|failure|denied|rejected|error|started``),
  ``reason``, ``node_id``, ``correlation_id``, ``trace_id``, ``details`` (JSON, redacted before
  hashing), ``prev_hash`` and ``hash``. Independent chains (``chain_id``) share the table; its
  primary key is ``(chain_id, seq)``.

Guarantees (each one a test in ``tests/test_audit_log.py`` and ``tests/test_audit_log_postgres.py``):

* **Edits, deletions, insertions and reorders** of a record before the chain's head are found
  by :meth:`AuditLog.verify` at the first affected seq, as ``edited``, ``deleted`` (a seq gap
  or a chain break), ``inserted`` or ``reordered``. ``verify()`` never raises on tampering: it
  returns a :class:`VerifyReport`.
* **Tail truncation** is detected only against an anchor newer than the cut (``truncated``,
  naming the anchor's seq). *Without anchors, cutting records off the end is undetectable*: the
  shortened chain is a valid chain. Anchors (:class:`Anchor`) go to ``anchor_sink`` every
  ``anchor_every`` records and on :meth:`AuditLog.anchor`; keep them outside the database.
* **Whole-table rewriting.** *An attacker who rewrites the whole table can recompute a SHA-256
  chain; without anchors that is undetectable.* With an HMAC key the attacker lacks, the
  rewrite is detected (``bad_genesis`` or ``edited``), and so it is against any anchor taken
  before it.
* **Append-only in the database** (defence in depth; the chain is the evidence): the migration
  installs triggers rejecting UPDATE, DELETE and TRUNCATE on PostgreSQL and ``BEFORE
  UPDATE/DELETE ... RAISE(ABORT)`` triggers on SQLite. The one sanctioned deletion is
  :meth:`AuditLog.archive` (retention): it exports the records before a seq, stores an anchor
  for the last of them and deletes them in one transaction; ``verify()`` then starts from that
  anchor.
* **Concurrent appends are linearised**: PostgreSQL takes ``pg_advisory_xact_lock(hashtext(
  table || ':' || chain_id))`` and reads the head and inserts in the same transaction; SQLite
  files use ``BEGIN IMMEDIATE`` (the memory database serialises its transactions). A process
  remembers the head it wrote last and inserts only if it is still the head, so an append is
  one lock statement and one INSERT; when another process appended meanwhile it reads the head.
* **The process() guard** (rank 25: inside authentication, outside authorization and caching)
  records every call: success → ``success``; ``PermissionDeniedError`` → ``denied``;
  ``InputValidationError`` → ``rejected``; anything else → ``error`` with the exception type
  as the reason. The actor is the call's principal (``_context.principal``). The input is
  recorded as ``details.input_sha256`` (``sha256(canonical(input))``), never itself.
  Authentication rejections are recorded by authentication itself (it sits outside this
  guard) through :meth:`AuditLog.record` / :meth:`AuditLog.record_sync`.
* **Writes that fail**: with ``intent_records`` a ``started`` record is written before the
  call, and if it cannot be the call is refused with :class:`AuditUnavailableError` and never
  runs ("nothing runs unaudited"). After the call, ``on_write_error: raise`` raises
  :class:`AuditWriteError` (the operation ran: ``.result`` holds its value; health
  unhealthy), ``log`` returns the result, logs and counts the failure (health degraded).

Example:
    >>> import asyncio
    >>> from onex_compose import NodeEffect, compose
    >>> Node = compose(NodeEffect, ["audit_log"])
    >>> node = Node(capability_config={"database": {"namespace": "doctest_audit"}})
    >>> async def demo():
    ...     await node.audit.record("refund", resource="order:42", outcome="success",
    ...                             actor="alice", details={"amount": 12, "password": "x"})
    ...     rec = [r async for r in node.audit.query(actor="alice")][0]
    ...     return rec.details, (await node.audit.verify()).ok
    >>> asyncio.run(demo())
    ({'amount': 12, 'password': '[REDACTED]'}, True)
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities._log import logger
from onex_compose.capabilities.audit_log._audit import AuditLog, utc_stamp
from onex_compose.capabilities.audit_log._chain import Hasher, record_body, verify_export
from onex_compose.capabilities.audit_log._model import (
    HMAC_KEY_ENV,
    OUTCOMES,
    Anchor,
    AuditLogConfig,
    AuditLogProtocol,
    AuditRecord,
    AuditUnavailableError,
    AuditWriteError,
    VerifyReport,
)

__all__ = [
    "HMAC_KEY_ENV",
    "OUTCOMES",
    "Anchor",
    "AuditLog",
    "AuditLogConfig",
    "AuditLogProtocol",
    "AuditRecord",
    "AuditUnavailableError",
    "AuditWriteError",
    "Hasher",
    "MixinAuditLog",
    "VerifyReport",
    "outcome_of",
    "record_body",
    "utc_stamp",
    "verify_export",
]

T = TypeVar("T")
_MISSING = object()


def outcome_of(exc: BaseException) -> tuple[str, str]:
    """The guard's ``(outcome, reason)`` for an exception ``process()`` raised.

    Matched by class name along the MRO, so authorization's and authentication's errors are
    recognised without importing them.

    Example:
        >>> outcome_of(KeyError("x"))
        ('error', 'KeyError')
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    reason = getattr(exc, "reason", None)
    if "PermissionDeniedError" in names or "AuthenticationError" in names:
        return "denied", reason if isinstance(reason, str) and reason else type(exc).__name__
    if "InputValidationError" in names:
        return "rejected", type(exc).__name__
    return "error", type(exc).__name__


class _CallAudit:
    """What the guard needs per call, bound once per chain: action, input digest, writes."""

    __slots__ = ("audit", "cfg", "log")

    def __init__(self, audit: AuditLog, log: Any) -> None:
        self.audit = audit
        self.cfg = audit.config
        self.log = log

    def fields(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        data: Any = args[0] if args else next(iter(kwargs.values()), _MISSING)
        action = "process"
        path = self.audit._action_path
        if path is not None and data is not _MISSING:
            value: Any = data
            for part in path:
                if isinstance(value, Mapping):
                    value = value.get(part, _MISSING)
                else:
                    value = getattr(value, part, _MISSING)
                if value is _MISSING:
                    break
            if value is not _MISSING and value is not None:
                action = str(value)[:200]
        details: dict[str, Any] = {}
        if self.cfg.record_input_digest and data is not _MISSING:
            try:
                canonical = self.audit.serializer.canonical(data)
                details["input_sha256"] = hashlib.sha256(canonical).hexdigest()
            except Exception as exc:  # not canonical JSON: say so, never store the input
                details["input_sha256"] = None
                details["input_not_hashed"] = type(exc).__name__
        return action, details

    def refused(self, action: str, exc: AuditWriteError) -> AuditUnavailableError:
        return AuditUnavailableError(
            f"call refused: its intent record could not be written, and intent_records "
            f"allows nothing to run unaudited ({exc})", action=action, outcome="started")

    def failed(self, exc: AuditWriteError, action: str, outcome: str, result: Any,
               error: BaseException | None) -> AuditWriteError | None:
        """Apply ``on_write_error``: the error to raise, or ``None`` after logging it."""
        if self.cfg.on_write_error == "raise":
            return AuditWriteError(
                f"the operation ran (outcome {outcome}) but was not audited: {exc}",
                action=action, outcome=outcome, result=result, operation_error=error)
        self.log.error("audit_log: {} ({}) not audited: {}", action, outcome, exc)
        return None


def _binder(node: Any) -> _CallAudit:
    log = node.log if has_capability(node, "logging") else logger
    return _CallAudit(node.audit, log)


class MixinAuditLog:
    """Security audit logging and compliance tracking: ``self.audit`` (an :class:`AuditLog`).

    Requires ``database``, ``serialization`` and ``metrics``; uses ``logging``, ``tracing``,
    ``health_check`` and ``event_bus`` when composed (order-only). It does **not** depend on
    ``authentication``: the actor is read from ``_context.principal``.

    Example:
        >>> from onex_compose import NodeEffect, compose
        >>> Service = compose(NodeEffect, ["audit_log"])
        >>> Service.__name__
        'NodeEffect[audit_log,database,metrics,serialization]'
    """

    __onex_capability__ = "audit_log"
    __slots__ = ()

    def setup_audit_log(self, config: AuditLogConfig | Mapping[str, Any] | None = None) -> None:
        """Build ``self.audit``; register its migration, health check and the guard's state.

        Raises:
            ConfigurationError: ``require_hmac`` without a key, or an unusable ``anchor_sink``.
        """
        cfg = coerce_config(AuditLogConfig, config, "audit_log")
        node = cast(Any, self)
        node.audit = _build(node, cfg)
        if has_capability(self, "health_check"):
            node.register_health_check(node.audit.health, name="audit_log")
        node._onex_chain = None  # the guard binds the new facility on the next call

    @facility
    def audit(self) -> AuditLog:
        """The node's audit log (default config when setup never ran)."""
        return _build(cast(Any, self), AuditLogConfig())

    async def close_audit_log(self) -> None:
        """Stop the sync API's private loop, if one was started."""
        audit = getattr(self, "audit", None)
        if isinstance(audit, AuditLog):
            await audit.aclose()

    def _guard_audit_log(self, call: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """Wrap ``process()``: record every call with its outcome and actor (guard rank 25)."""
        node = cast(Any, self)
        if not node.audit.config.audit_process:
            return call
        bound = _binder(node)
        audit = bound.audit
        intent = bound.cfg.intent_records

        @functools.wraps(call)
        async def audited(*args: Any, **kwargs: Any) -> T:
            action, details = bound.fields(args, kwargs)
            if intent:
                try:
                    started = await audit.record(action, outcome="started", details=details)
                except AuditWriteError as exc:
                    raise bound.refused(action, exc) from exc
                details = {**details, "intent_seq": started.seq}
            try:
                result = await call(*args, **kwargs)
            except BaseException as exc:
                outcome, reason = outcome_of(exc)
                try:
                    await audit.record(action, outcome=outcome, reason=reason, details=details)
                except AuditWriteError as werr:
                    err = bound.failed(werr, action, outcome, None, exc)
                    if err is not None:
                        raise err from exc
                raise
            try:
                await audit.record(action, outcome="success", details=details)
            except AuditWriteError as werr:
                err = bound.failed(werr, action, "success", result, None)
                if err is not None:
                    raise err from werr
            return result

        return audited

    def _guard_sync_audit_log(self, call: Callable[..., T]) -> Callable[..., T]:
        """The sync twin of :meth:`_guard_audit_log` (writes through ``record_sync``)."""
        node = cast(Any, self)
        if not node.audit.config.audit_process:
            return call
        bound = _binder(node)
        audit = bound.audit
        intent = bound.cfg.intent_records

        @functools.wraps(call)
        def audited_sync(*args: Any, **kwargs: Any) -> T:
            action, details = bound.fields(args, kwargs)
            if intent:
                try:
                    started = audit.record_sync(action, outcome="started", details=details)
                except AuditWriteError as exc:
                    raise bound.refused(action, exc) from exc
                details = {**details, "intent_seq": started.seq}
            try:
                result = call(*args, **kwargs)
            except BaseException as exc:
                outcome, reason = outcome_of(exc)
                try:
                    audit.record_sync(action, outcome=outcome, reason=reason, details=details)
                except AuditWriteError as werr:
                    err = bound.failed(werr, action, outcome, None, exc)
                    if err is not None:
                        raise err from exc
                raise
            try:
                audit.record_sync(action, outcome="success", details=details)
            except AuditWriteError as werr:
                err = bound.failed(werr, action, "success", result, None)
                if err is not None:
                    raise err from werr
            return result

        return audited_sync


def _build(node: Any, cfg: AuditLogConfig) -> AuditLog:
    old = getattr(node, "audit", None)
    clock = old.clock if isinstance(old, AuditLog) else None
    return AuditLog(cfg, db=node.db, serializer=node.serializer, metrics=node.metrics,
                    node=node, tracing=has_capability(node, "tracing"),
                    logging=has_capability(node, "logging"),
                    event_bus=has_capability(node, "event_bus"), clock=clock)
