"""The authorization capability's configuration, errors, permission matching and protocol."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from onex_compose.capabilities._context import Principal
from onex_compose.exceptions import OnexError, did_you_mean

_SEGMENT = r"(?:[a-z0-9_./-]+|\*)"
_PERMISSION = re.compile(rf"{_SEGMENT}(?::{_SEGMENT})*")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


# ------------------------------------------------------------------------------------------------
# errors


class PermissionDeniedError(OnexError, PermissionError):
    """A principal lacks a permission (deny by default, or an explicit deny).

    Not retriable (the same call is denied again) and neutral for a circuit breaker (the caller,
    not a dependency, is at fault). The message carries the subject, the permission and the
    roles, never claims, tokens or resource contents.

    Attributes:
        permission: the permission that was needed.
        subject: the principal's subject (``None`` when the call had no principal).
        reason: ``no_permission``, ``explicit_deny``, ``condition_failed``, ``missing_scope``,
            ``unmapped_action`` or ``unauthenticated``.
        roles: the principal's own roles (sorted).
        hint: how to grant it (the configuration line), when there is one.

    Example:
        >>> err = PermissionDeniedError("orders:write", "alice", "no_permission", ["reader"])
        >>> str(err).splitlines()[0]
        "subject 'alice' lacks permission 'orders:write' (roles: reader)"
    """

    onex_retriable = False
    onex_breaker_neutral = True

    def __init__(self, permission: str, subject: str | None, reason: str,
                 roles: Iterable[str] = (), *, hint: str = "", detail: str = "") -> None:
        self.permission = permission
        self.subject = subject
        self.reason = reason
        self.roles = sorted(roles)
        self.hint = hint
        who = "an unauthenticated call" if subject is None else f"subject {subject!r}"
        message = (f"{who} lacks permission {permission!r} "
                   f"(roles: {', '.join(self.roles) or 'none'})")
        if detail:
            message += f": {detail}"
        if hint:
            message += f"\n{hint}"
        super().__init__(message)


# ------------------------------------------------------------------------------------------------
# config


def _check_permission(value: str, where: str) -> str:
    if not isinstance(value, str) or _PERMISSION.fullmatch(value) is None:
        raise ValueError(
            f"{where}: {value!r} is not a permission: expected 'resource:action' with segments "
            "of a-z 0-9 _ . / - or '*' (e.g. 'orders:write', 'orders:*', '*:read', '*')")
    return value


class RoleConfig(BaseModel):
    """One role: its permissions, the roles it inherits, and a description."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    permissions: list[str] = Field(default_factory=list)
    inherits: list[str] = Field(default_factory=list)
    description: str = ""


class DenyRule(BaseModel):
    """An explicit deny: ``permission`` for ``roles`` (``"*"``: everyone), when ``condition``
    (a registered condition name, or ``None``: always) holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    permission: str
    roles: list[str] = Field(default_factory=lambda: ["*"])
    condition: str | None = None


class AuthorizationConfig(BaseModel):
    """The ``authorization`` subcontract (every key of ``authorization_config``).

    Attributes:
        roles: ``role -> {permissions, inherits, description}``.
        deny: explicit deny rules; an explicit deny wins over any allow.
        process_permission: what ``process()`` needs (``None``: the guard checks nothing unless
            ``action_key`` is set).
        action_key: multi-action nodes: the input key naming the action.
        action_permissions: ``action -> permission``; an unmapped action is denied.
        conditions: ``permission pattern -> condition name``.
        resource_from_input: dotted path into ``process()``'s input passed to conditions.
        superuser_role: a role allowed everything (explicit denies still apply).
        require_scope: JWT principals also need the permission among their scopes.
        label_permissions: add a ``permission`` label to ``authz_decisions_total``.
        cache_size: condition-free decisions cached.

    Example:
        >>> AuthorizationConfig(roles={"a": {"inherits": ["b"]}})
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for AuthorizationConfig
          Value error, roles.a.inherits: unknown role 'b' (known roles: a) [...]
        ...
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: dict[str, RoleConfig] = Field(default_factory=dict)
    deny: list[DenyRule] = Field(default_factory=list)
    process_permission: str | None = "node:process"
    action_key: str | None = None
    action_permissions: dict[str, str] = Field(default_factory=dict)
    conditions: dict[str, str] = Field(default_factory=dict)
    resource_from_input: str | None = None
    superuser_role: str | None = None
    require_scope: bool = False
    label_permissions: bool = False
    cache_size: int = Field(default=10000, ge=0)

    @field_validator("process_permission")
    @classmethod
    def _check_process_permission(cls, value: str | None) -> str | None:
        return None if value is None else _check_permission(value, "process_permission")

    @model_validator(mode="after")
    def _check_all(self) -> AuthorizationConfig:
        problems: list[str] = []

        def check(value: str, where: str) -> None:
            try:
                _check_permission(value, where)
            except ValueError as exc:
                problems.append(str(exc))

        names = list(self.roles)
        for name, role in self.roles.items():
            if _NAME.fullmatch(name) is None:
                problems.append(f"roles: role name {name!r} must be 1-100 of A-Z a-z 0-9 _ . -")
            for i, perm in enumerate(role.permissions):
                check(perm, f"roles.{name}.permissions[{i}]")
            for parent in role.inherits:
                if parent not in self.roles:
                    problems.append(
                        f"roles.{name}.inherits: unknown role {parent!r}"
                        f"{did_you_mean(parent, names)} (known roles: {', '.join(names)})")
        cycle = _find_cycle({n: r.inherits for n, r in self.roles.items()})
        if cycle:
            problems.append(f"roles: inheritance cycle {' -> '.join(cycle)}; remove one of "
                            "these 'inherits' entries")
        for i, rule in enumerate(self.deny):
            check(rule.permission, f"deny[{i}].permission")
            for role_name in rule.roles:
                if role_name != "*" and role_name not in self.roles:
                    problems.append(f"deny[{i}].roles: unknown role {role_name!r}"
                                    f"{did_you_mean(role_name, names)} (use '*' for everyone)")
        for action, perm in self.action_permissions.items():
            check(perm, f"action_permissions.{action}")
        for perm in self.conditions:
            check(perm, f"conditions.{perm}")
        if self.action_permissions and self.action_key is None:
            problems.append("action_permissions is set but action_key is not: name the input "
                            "key holding the action (action_key: \"action\")")
        if self.superuser_role is not None and self.superuser_role not in self.roles:
            problems.append(f"superuser_role: unknown role {self.superuser_role!r}"
                            f"{did_you_mean(self.superuser_role, names)}; declare it under "
                            "roles (it may have no permissions)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """The first inheritance cycle found (``[a, b, a]``), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


# ------------------------------------------------------------------------------------------------
# matching


def permission_matches(pattern: str, permission: str) -> bool:
    """Whether a granted ``pattern`` covers ``permission`` (segment by segment).

    Example:
        >>> permission_matches("orders:*", "orders:write"), permission_matches("*:read", "x:read")
        (True, True)
        >>> permission_matches("orders:read", "orders:write"), permission_matches("*", "a:b:c")
        (False, True)
    """
    if pattern == "*" or pattern == permission:
        return True
    want = pattern.split(":")
    have = permission.split(":")
    if want[-1] == "*" and len(have) >= len(want):
        have = have[:len(want)]
    if len(want) != len(have):
        return False
    return all(w == "*" or w == h for w, h in zip(want, have, strict=True))


class Decision(NamedTuple):
    """The outcome of a check.

    Attributes:
        allowed: whether the permission is granted.
        reason: ``granted``, ``superuser``, ``explicit_deny``, ``no_permission``,
            ``condition_failed``, ``missing_scope``, ``unmapped_action`` or ``unauthenticated``.
        rule: the configuration rule that decided (``None`` when nothing matched).
    """

    allowed: bool
    reason: str
    rule: str | None = None


_UNAUTHENTICATED = Decision(False, "unauthenticated", None)
_NO_PERMISSION = Decision(False, "no_permission", None)


class _Grant(NamedTuple):
    pattern: str
    role: str


class AuthorizationProtocol(Protocol):
    """What ``self.authorizer`` offers (the contract's actions)."""

    def check(self, permission: str, principal: Principal | None = None,
              resource: Any = None) -> Decision: ...

    def require(self, permission: str, principal: Principal | None = None,
                resource: Any = None) -> Decision: ...

    def permissions_for(self, principal: Principal | None = None) -> frozenset[str]: ...

    def explain(self, principal: Principal | None, permission: str,
                resource: Any = None) -> str: ...
