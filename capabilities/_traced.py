"""How the landed capabilities reach the node's tracer (issue 11's retrofit), at no cost without it.

caching, retry, circuit_breaker, rate_limiting, bulkhead, timeout and database declare
``tracing`` as an optional (order-only) dependency, so the tracer exists before their setup
runs. In its setup each one asks :func:`tracer_for` once; the answer is ``node.tracer`` when
the node composes tracing, tracing is enabled and the capability is named in the tracer's
``instrument`` list, and ``None`` otherwise. The facility keeps that answer in one attribute
and reads it only where it has something to report, which is never an L1 cache hit, a retry
loop's first successful attempt, a closed breaker's call or an admitted request:

============================  =======================================================
capability                    emits
============================  =======================================================
caching                       a CLIENT span per Redis L2 round trip (``cache.l2.get``,
                              ``.set``, ``.delete``, ``.clear``)
retry                         event ``retry.attempt`` per retry; ``retry.outcome`` on
                              the current span when a loop that retried ends
circuit_breaker               events ``circuit_breaker.state_change``, ``.rejected``
rate_limiting                 events ``rate_limit.wait``, ``rate_limit.rejected``
bulkhead                      events ``bulkhead.queued``, ``bulkhead.rejected``
timeout                       event ``timeout.expired``
database                      a CLIENT span per statement (``db.query``) and one per
                              transaction (``db.transaction``) with its outcome
============================  =======================================================

Without tracing nothing here runs on a call path, and this module imports nothing from
OpenTelemetry (neither does :func:`tracer_for`: it reads the composition and the tracer's
configuration).
"""

from __future__ import annotations

import re
from typing import Any

from onex_compose import has_capability

__all__ = ["mark_error", "sql_operation", "tracer_for"]


def tracer_for(node: Any, capability: str) -> Any | None:
    """The tracer ``capability`` reports to on ``node``, or ``None`` (then it reports nothing).

    ``node.tracer`` when the node composes ``tracing``, tracing is enabled, and
    ``capability`` is in the tracer's ``instrument`` list. Called by setup hooks only.

    Example:
        >>> from onex_compose import NodeCompute, compose
        >>> tracer_for(compose(NodeCompute, ["retry"])(), "retry") is None
        True
    """
    if not has_capability(node, "tracing"):
        return None
    return node.tracer.for_capability(capability)


_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.S)
_KEYWORD = re.compile(r"[A-Za-z]+")
_CLAUSE_OPS = (("is_select", "SELECT"), ("is_insert", "INSERT"), ("is_update", "UPDATE"),
               ("is_delete", "DELETE"))


def sql_operation(sql: Any) -> str:
    """``db.operation.name`` of a statement: its first keyword, upper-cased (never values).

    Leading whitespace, comments and parentheses are skipped. A SQLAlchemy construct gives its
    kind (``SELECT``, ``INSERT``, ``UPDATE``, ``DELETE``), a ``text()`` clause its text's
    first keyword; anything else gives ``""``.

    Example:
        >>> sql_operation("  /* report */ select * from t where secret = 'x'")
        'SELECT'
        >>> sql_operation("-- note\\n(WITH a AS (SELECT 1) SELECT * FROM a)")
        'WITH'
        >>> sql_operation("")
        ''
    """
    if not isinstance(sql, str):
        text = getattr(sql, "text", None)
        if isinstance(text, str):  # sqlalchemy.text()
            sql = text
        else:
            for flag, name in _CLAUSE_OPS:
                if getattr(sql, flag, False) is True:
                    return name
            return ""
    start = _LEADING.match(sql)
    match = _KEYWORD.match(sql, start.end() if start else 0)
    return match.group(0).upper() if match else ""


def mark_error(span: Any, error_type: str, description: str | None = None) -> None:
    """Give ``span`` status ERROR and ``error.type`` (OpenTelemetry's convention) for a
    failure that was handled, not raised through the span (a Redis L2 outage served from L1).

    Imports ``opentelemetry.trace`` only when called, which happens only with tracing on.
    """
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description))
