"""authorization: role-based access control, deny by default (``self.authorizer``, guard rank 30).

What it gives a node (seed 000's ``MixinAuthorization``: "Role-based access control and
permissions"):

* ``self.authorizer``: an :class:`Authorizer` (``check``, ``require``, ``permissions_for``,
  ``explain``, ``condition``) and the module decorator :func:`requires` for node methods.
* ``_guard_authorization`` / ``_guard_sync_authorization`` (guard rank 30: inside
  authentication (22) and audit_log (25), outside validation and caching, so a cache hit never
  bypasses it): every ``process()`` call needs ``process_permission`` (``"node:process"``), or,
  for a multi-action node, the permission ``action_permissions`` maps its action to.

**Permissions** are ``resource:action`` strings of segments separated by ``:``. In the
configuration each segment is ``[a-z0-9_./-]+`` or ``*``: a ``*`` segment matches any one
segment, and a ``*`` as the last segment also matches every segment after it (``orders:*``
matches ``orders:write``; ``*`` matches everything; ``*:read`` matches ``orders:read``;
``secrets:read:*`` matches ``secrets:read:db/password``). The ``/`` is accepted so secure
storage's ``secrets:read:<name>`` can name a secret such as ``db/password``.

**Decision** (:meth:`Authorizer.check`), for the principal of the call (``_context.principal``,
set by authentication) or the one given:

1. no principal → deny (``unauthenticated``);
2. a ``deny`` rule whose permission matches, whose roles match (``"*"`` or one of the
   principal's effective roles) and whose condition (if any) holds → deny (``explicit_deny``):
   an explicit deny wins over any allow, the superuser's included;
3. the ``superuser_role`` among the effective roles → allow (``superuser``);
4. a permission of the effective roles (the principal's own roles plus every role they inherit,
   transitively) matches, and every condition configured for the permission holds → allow
   (``granted``), else deny (``condition_failed``);
5. otherwise deny (``no_permission``). With ``require_scope``, an allowed JWT principal must
   also carry a matching scope (``missing_scope``).

A node composed with authorization and no roles denies every call; the error names the missing
permission and shows the configuration line that would grant it.

**Conditions** are named Python predicates registered in code (no string is ever evaluated)::

    @node.authorizer.condition("same_tenant")
    def same_tenant(principal, resource, permission) -> bool:
        return resource is not None and resource.get("tenant") == principal.tenant

``conditions`` maps a permission pattern to a condition name; the resource passed is the value
at ``resource_from_input`` (a dotted path into ``process()``'s input) or ``check(resource=...)``.
Names are checked at ``start()`` and on first use: an unknown name is a
:class:`~onex_compose.ConfigurationError` naming it. Conditions live in code, not in the
configuration: ``setup_authorization`` called again keeps them, but a node rebuilt from a pickle
must register them again (until then a check that needs one raises that error).

**Caching.** Decisions that involve no condition are cached per ``(roles, permission)``, so a
repeated check is a dictionary lookup; the cache holds at most ``cache_size`` entries (it is
emptied when full) and is dropped on reconfiguration and when a condition is registered.

**Audit.** With ``audit_log`` composed, the audit guard records every ``process()`` call, denials
included; ``require()`` called outside ``process()`` records its own denials (outcome
``denied``), so no denial is recorded twice.

Example:
    >>> from onex_compose.capabilities._context import Principal
    >>> authz = Authorizer({"roles": {"reader": {"permissions": ["orders:read"]},
    ...                               "writer": {"permissions": ["orders:write"],
    ...                                          "inherits": ["reader"]}}})
    >>> alice = Principal("alice", "jwt", roles=["writer"])
    >>> authz.check("orders:read", principal=alice)
    Decision(allowed=True, reason='granted', rule="roles.reader.permissions: 'orders:read'")
    >>> authz.check("orders:delete", principal=alice).reason
    'no_permission'
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities import _context
from onex_compose.capabilities._context import Principal
from onex_compose.exceptions import ConfigurationError, OnexError, did_you_mean

__all__ = [
    "AuthorizationConfig",
    "AuthorizationProtocol",
    "Authorizer",
    "Decision",
    "DenyRule",
    "MixinAuthorization",
    "PermissionDeniedError",
    "RoleConfig",
    "permission_matches",
    "requires",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

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


Condition = Callable[[Principal, Any, str], bool]


class Authorizer:
    """Role-based access control, deny by default (the ``authorizer`` facility).

    Args:
        config: an :class:`AuthorizationConfig`, a mapping of its fields, or ``None``.
        metrics: the node's metrics facility (``authz_decisions_total``), or ``None``.
        audit: a callable ``(permission, subject, reason, resource) -> None`` recording a
            denial of a direct :meth:`require` call, or ``None``.

    Raises:
        ConfigurationError: an inheritance cycle, an unknown inherited role (with a
            did-you-mean), a bad permission, or another invalid field.
    """

    def __init__(self, config: AuthorizationConfig | Mapping[str, Any] | None = None, *,
                 metrics: Any = None,
                 audit: Callable[[str, Principal | None, str, Any], None] | None = None
                 ) -> None:
        cfg: AuthorizationConfig = coerce_config(AuthorizationConfig, config, "authorization")
        self.config = cfg
        self.metrics = metrics
        self._audit = audit
        self._conditions: dict[str, Condition] = {}
        self._conditions_checked = False
        # role -> every role it is, itself included (transitive closure of inherits)
        self._closure: dict[str, frozenset[str]] = {}
        for name in cfg.roles:
            self._closure[name] = self._close(name)
        self._grants: dict[str, tuple[_Grant, ...]] = {
            name: tuple(_Grant(p, name) for p in role.permissions)
            for name, role in cfg.roles.items()}
        self._deny = tuple(enumerate(cfg.deny))
        self._condition_patterns = tuple(cfg.conditions.items())
        self._cache: dict[tuple[frozenset[str], str], tuple[Decision, Callable[[], Any]]] = {}
        self._require_scope = cfg.require_scope
        self._label_permissions = cfg.label_permissions
        self._roles_cache: dict[frozenset[str], frozenset[str]] = {}
        self._counters: dict[tuple[Any, ...], Callable[..., Any]] = {}
        self._pending: set[asyncio.Task[Any]] = set()

    def _close(self, name: str) -> frozenset[str]:
        seen: set[str] = set()
        todo = [name]
        while todo:
            role = todo.pop()
            if role in seen or role not in self.config.roles:
                continue
            seen.add(role)
            todo.extend(self.config.roles[role].inherits)
        return frozenset(seen)

    def __repr__(self) -> str:
        cfg = self.config
        return (f"<Authorizer roles={sorted(cfg.roles)} deny_rules={len(cfg.deny)} "
                f"process_permission={cfg.process_permission!r}>")

    # -- conditions -----------------------------------------------------------------------------

    def condition(self, name: str) -> Callable[[F], F]:
        """Register a condition predicate ``(principal, resource, permission) -> bool``.

        Example:
            >>> authz = Authorizer({"roles": {"r": {"permissions": ["doc:read"]}},
            ...                     "conditions": {"doc:read": "mine"}})
            >>> @authz.condition("mine")
            ... def mine(principal, resource, permission):
            ...     return resource == principal.subject
            >>> p = Principal("ann", "jwt", roles=["r"])
            >>> authz.check("doc:read", p, resource="ann").allowed
            True
            >>> authz.check("doc:read", p, resource="bob").reason
            'condition_failed'
        """
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            raise ValueError(f"condition name must be 1-100 of A-Z a-z 0-9 _ . -, got {name!r}")

        def register(fn: F) -> F:
            if not callable(fn) or inspect.iscoroutinefunction(fn):
                raise TypeError(f"condition {name!r} must be a plain function "
                                "(principal, resource, permission) -> bool, not a coroutine")
            self._conditions[name] = cast(Condition, fn)
            self._cache.clear()
            return fn

        return register

    def check_conditions(self) -> None:
        """Raise if a configured condition name has no registered predicate (called by
        ``start()`` and on the first check that needs a condition).

        Raises:
            ConfigurationError: naming every unknown condition and where it is configured.
        """
        problems = []
        known = sorted(self._conditions)
        for perm, name in self.config.conditions.items():
            if name not in self._conditions:
                problems.append(f"conditions.{perm}: condition {name!r} is not registered"
                                f"{did_you_mean(name, known)}")
        for i, rule in enumerate(self.config.deny):
            if rule.condition is not None and rule.condition not in self._conditions:
                problems.append(f"deny[{i}].condition: condition {rule.condition!r} is not "
                                f"registered{did_you_mean(rule.condition, known)}")
        if problems:
            raise ConfigurationError(
                "authorization: unknown condition names. Register each one in code with "
                "@node.authorizer.condition(\"<name>\") def f(principal, resource, permission)"
                f" -> bool (registered: {', '.join(known) or 'none'})",
                capability="authorization", problems=problems)
        self._conditions_checked = True

    def _run_condition(self, name: str, principal: Principal, resource: Any,
                       permission: str) -> bool:
        if not self._conditions_checked:
            self.check_conditions()
        return bool(self._conditions[name](principal, resource, permission))

    # -- decisions ------------------------------------------------------------------------------

    def _effective(self, roles: frozenset[str]) -> frozenset[str]:
        found = self._roles_cache.get(roles)
        if found is None:
            acc: set[str] = set()
            closure = self._closure
            for role in roles:
                acc.update(closure.get(role, ()))
            found = frozenset(acc)
            if len(self._roles_cache) >= max(self.config.cache_size, 1):
                self._roles_cache.clear()
            self._roles_cache[roles] = found
        return found

    def _counter(self, decision: Decision, permission: str) -> Callable[[], Any]:
        """A bound counter for ``authz_decisions_total`` with this decision's labels."""
        metrics = self.metrics
        if metrics is None:
            return _nothing
        labels = {"outcome": "allow" if decision.allowed else "deny", "reason": decision.reason}
        key: tuple[Any, ...] = (decision.allowed, decision.reason)
        if self._label_permissions:
            labels["permission"] = permission
            key = (*key, permission)
        counter = self._counters.get(key)
        if counter is None:
            bind = getattr(metrics, "bind_counter", None)
            if bind is not None:
                counter = bind("authz_decisions_total", labels=labels)
            else:
                def counter(_labels: dict[str, str] = labels) -> None:
                    metrics.increment("authz_decisions_total", 1, _labels)
            if len(self._counters) < 4 * max(self.config.cache_size, 64):
                self._counters[key] = counter
        return cast(Callable[[], Any], counter)

    def _count(self, decision: Decision, permission: str) -> None:
        self._counter(decision, permission)()

    def check(self, permission: str, principal: Principal | None = None,
              resource: Any = None) -> Decision:
        """Decide whether ``principal`` (default: the call's) has ``permission``.

        Args:
            permission: the permission needed (``resource:action``).
            principal: the principal; ``None`` reads the current call's.
            resource: passed to conditions.

        Returns:
            A :class:`Decision` (``allowed``, ``reason``, ``rule``). Every decision is counted
            in ``authz_decisions_total``.
        """
        if principal is None:
            principal = _context.principal.get()
            if principal is None:
                self._count(_UNAUTHENTICATED, permission)
                return _UNAUTHENTICATED
        key = (principal.roles, permission)
        hit = self._cache.get(key)
        if hit is not None and not self._require_scope:  # the fast path: one lookup, one count
            hit[1]()
            return hit[0]
        if hit is not None:
            decision = hit[0]
        else:
            decision, cacheable = self._decide(principal, permission, resource)
            if cacheable and self.config.cache_size:
                cache = self._cache
                if len(cache) >= self.config.cache_size:
                    cache.clear()
                cache[key] = (decision, self._counter(decision, permission))
        if decision.allowed and self._require_scope and principal.scheme == "jwt":
            decision = self._scoped(principal, permission, decision)
        self._count(decision, permission)
        return decision

    def _scoped(self, principal: Principal, permission: str, decision: Decision) -> Decision:
        if any(permission_matches(scope, permission) for scope in principal.scopes):
            return decision
        return Decision(False, "missing_scope", "require_scope: the token's scopes "
                                                f"({' '.join(sorted(principal.scopes)) or 'none'})"
                                                f" do not include {permission!r}")

    def _decide(self, principal: Principal, permission: str, resource: Any
                ) -> tuple[Decision, bool]:
        """The decision and whether it may be cached (no condition was consulted)."""
        roles = self._effective(principal.roles)
        cacheable = True
        for i, rule in self._deny:
            if not permission_matches(rule.permission, permission):
                continue
            if "*" not in rule.roles and roles.isdisjoint(rule.roles):
                continue
            where = f"deny[{i}]: {rule.permission!r} for roles {rule.roles}"
            if rule.condition is not None:
                cacheable = False
                if not self._run_condition(rule.condition, principal, resource, permission):
                    continue
                where += f" when {rule.condition!r}"
            return Decision(False, "explicit_deny", where), cacheable
        superuser = self.config.superuser_role
        if superuser is not None and superuser in roles:
            return Decision(True, "superuser", f"superuser_role: {superuser!r}"), cacheable
        grant = self._grant(roles, permission)
        if grant is None:
            return _NO_PERMISSION, cacheable
        granted = f"roles.{grant.role}.permissions: {grant.pattern!r}"
        for pattern, name in self._condition_patterns:
            if permission_matches(pattern, permission):
                cacheable = False
                if not self._run_condition(name, principal, resource, permission):
                    return Decision(False, "condition_failed",
                                    f"{granted}; conditions.{pattern}: {name!r} is false"), False
                granted += f" when {name!r}"
        return Decision(True, "granted", granted), cacheable

    def _grant(self, roles: frozenset[str], permission: str) -> _Grant | None:
        grants = self._grants
        for role in sorted(roles):
            for grant in grants.get(role, ()):
                if permission_matches(grant.pattern, permission):
                    return grant
        return None

    def how_to_grant(self, permission: str, principal: Principal | None) -> str:
        """The configuration line that would grant ``permission`` to ``principal``."""
        own = sorted(principal.roles) if principal is not None else []
        role = own[0] if own else "<role>"
        return (f"to grant it, add it to a role of the principal in the authorization config: "
                f"roles: {{{role}: {{permissions: [{permission!r}]}}}}")

    def require(self, permission: str, principal: Principal | None = None,
                resource: Any = None) -> Decision:
        """:meth:`check`, raising when denied.

        Outside ``process()`` (not under this node's guard) a denial is recorded in the audit
        log when ``audit_log`` is composed.

        Raises:
            PermissionDeniedError: the permission is not granted.
        """
        decision = self.check(permission, principal, resource)
        if decision.allowed:
            return decision
        who = principal if principal is not None else _context.principal.get()
        err = self.denied(permission, who, decision)
        if self._audit is not None:
            try:
                self._audit(permission, who, decision.reason, resource)
            except Exception as exc:  # the caller is told about the denial, never hidden by it
                from onex_compose.capabilities._log import logger

                logger.warning("authorization: could not audit a denied require() ({}): {}",
                               decision.reason, type(exc).__name__)
        raise err

    def denied(self, permission: str, principal: Principal | None,
               decision: Decision) -> PermissionDeniedError:
        """The :class:`PermissionDeniedError` for a denied ``decision``."""
        hint = ""
        detail = ""
        if decision.reason in ("no_permission", "unmapped_action"):
            hint = self.how_to_grant(permission, principal)
        elif decision.reason == "explicit_deny":
            detail = f"denied explicitly by {decision.rule}"
        elif decision.reason == "condition_failed":
            detail = "a condition on the permission is false"
        elif decision.reason == "missing_scope":
            detail = "the token's scopes do not include it (require_scope)"
        elif decision.reason == "unauthenticated":
            detail = "no principal (compose authentication, or present credentials)"
        return PermissionDeniedError(
            permission, principal.subject if principal is not None else None, decision.reason,
            principal.roles if principal is not None else (), hint=hint, detail=detail)

    def permissions_for(self, principal: Principal | None = None) -> frozenset[str]:
        """Every permission pattern the principal's effective roles grant (``{"*"}`` for the
        superuser); explicit deny rules are not subtracted (see :meth:`explain`)."""
        if principal is None:
            principal = _context.principal.get()
            if principal is None:
                return frozenset()
        roles = self._effective(principal.roles)
        if self.config.superuser_role is not None and self.config.superuser_role in roles:
            return frozenset({"*"})
        return frozenset(g.pattern for role in roles for g in self._grants.get(role, ()))

    def explain(self, principal: Principal | None, permission: str,
                resource: Any = None) -> str:
        """Which rule decided, for humans (nothing is counted or cached).

        Example:
            >>> authz = Authorizer({"roles": {"reader": {"permissions": ["orders:read"]}}})
            >>> text = authz.explain(Principal("bob", "jwt", roles=["reader"]), "orders:write")
            >>> print(text.splitlines()[0])
            DENY 'orders:write' for subject 'bob' (roles: reader; effective: reader): no_permission
            >>> print(text.splitlines()[1].split("; ")[0])
              no rule grants it
        """
        if principal is None:
            principal = _context.principal.get()
        if principal is None:
            return f"DENY {permission!r}: no principal (unauthenticated)"
        decision, _ = self._decide(principal, permission, resource)
        if decision.allowed and self.config.require_scope and principal.scheme == "jwt":
            decision = self._scoped(principal, permission, decision)
        effective = ", ".join(sorted(self._effective(principal.roles))) or "none"
        head = (f"{'ALLOW' if decision.allowed else 'DENY'} {permission!r} for subject "
                f"{principal.subject!r} (roles: {', '.join(sorted(principal.roles)) or 'none'}; "
                f"effective: {effective}): {decision.reason}")
        if decision.rule is not None:
            return f"{head}\n  by {decision.rule}"
        return f"{head}\n  no rule grants it; {self.how_to_grant(permission, principal)}"

    # -- the guard's helpers ----------------------------------------------------------------------

    def permission_of(self, data: Any) -> str | None:
        """The permission a ``process()`` input needs (``None``: nothing to check); an action
        missing from ``action_permissions`` gives ``""`` (denied as ``unmapped_action``)."""
        cfg = self.config
        if cfg.action_key is None:
            return cfg.process_permission
        action = _lookup(data, cfg.action_key)
        if not isinstance(action, str) or action not in cfg.action_permissions:
            return ""
        return cfg.action_permissions[action]

    def resource_of(self, data: Any) -> Any:
        """The value at ``resource_from_input`` in ``data`` (``None`` when unset or absent)."""
        path = self.config.resource_from_input
        return None if path is None else _lookup(data, path)

    async def drain(self) -> None:
        """Wait for audit records scheduled by :meth:`require` denials (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _unmapped(self, data: Any) -> PermissionDeniedError:
        action = _lookup(data, cast(str, self.config.action_key))
        principal = _context.principal.get()
        decision = Decision(False, "unmapped_action", None)
        self._count(decision, "")
        shown = action if isinstance(action, str) else type(action).__name__
        mapped = ", ".join(sorted(self.config.action_permissions)) or "none"
        return PermissionDeniedError(
            f"action:{shown}", principal.subject if principal else None, "unmapped_action",
            principal.roles if principal else (),
            detail=(f"action {shown!r} has no entry in action_permissions (mapped: {mapped}); "
                    "unmapped actions are denied"))


def _nothing() -> None:
    return None


def _lookup(data: Any, path: str) -> Any:
    value = data
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
        if value is None:
            return None
    return value


# ------------------------------------------------------------------------------------------------
# the decorator


def requires(permission: str, *, resource: Callable[..., Any] | None = None
             ) -> Callable[[F], F]:
    """Decorate a node method so it needs ``permission`` (checked by ``self.authorizer``).

    Works on ``def`` and ``async def`` methods. ``resource``, when given, computes the resource
    for conditions from the method's arguments (``resource(self, *args, **kwargs)``).

    Example:
        >>> class Orders:
        ...     @requires("orders:refund")
        ...     def refund(self, order_id): ...
        >>> Orders.refund.__onex_permission__
        'orders:refund'
    """
    _check_permission(permission, "requires()")

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def checked_async(self: Any, *args: Any, **kwargs: Any) -> Any:
                res = resource(self, *args, **kwargs) if resource is not None else None
                self.authorizer.require(permission, resource=res)
                return await fn(self, *args, **kwargs)

            wrapped: Any = checked_async
        else:
            @functools.wraps(fn)
            def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
                res = resource(self, *args, **kwargs) if resource is not None else None
                self.authorizer.require(permission, resource=res)
                return fn(self, *args, **kwargs)

            wrapped = checked
        wrapped.__onex_permission__ = permission
        return cast(F, wrapped)

    return decorate


# ------------------------------------------------------------------------------------------------
# the mixin


def _inside_pipeline(node: Any) -> bool:
    from onex_compose._pipeline import _inside

    inside = _inside.get()
    return inside is not None and inside[0] is node


def _audit_hook(node: Any) -> Callable[[str, Principal | None, str, Any], None]:
    """Record a denial of a direct ``require()`` (outside ``process()``) in the audit log."""

    def record(permission: str, principal: Principal | None, reason: str, resource: Any) -> None:
        if _inside_pipeline(node):
            return  # the audit guard records the process() call's outcome
        authz: Authorizer = node.authorizer
        audit = node.audit
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # sync code: the audit log's sync path, or a private loop
            sync = getattr(audit, "record_sync", None)
            if sync is not None:
                sync("authorize", resource=permission, outcome="denied", reason=reason,
                     actor=principal)
            else:
                asyncio.run(audit.record("authorize", resource=permission, outcome="denied",
                                         reason=reason, actor=principal))
            return
        task = loop.create_task(audit.record("authorize", resource=permission,
                                             outcome="denied", reason=reason, actor=principal))
        authz._pending.add(task)
        task.add_done_callback(_finished(authz))

    return record


def _finished(authz: Authorizer) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        authz._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            from onex_compose.capabilities._log import logger

            logger.warning("authorization: could not audit a denied require(): {}",
                           type(task.exception()).__name__)

    return done


class MixinAuthorization:
    """Role-based access control and permissions: ``self.authorizer`` and a ``process()`` guard.

    Requires ``authentication`` (the principal) and ``metrics``; with ``audit_log`` composed,
    denials of direct ``require()`` calls are audited.

    Example:
        >>> from onex_compose import NodeCompute, compose  # doctest: +SKIP
        >>> Node = compose(NodeCompute, ["authorization"])  # doctest: +SKIP
    """

    __onex_capability__ = "authorization"
    __slots__ = ()

    def setup_authorization(self, config: AuthorizationConfig | Mapping[str, Any] | None = None
                            ) -> None:
        """Build ``self.authorizer`` (conditions registered on a previous one are kept).

        Raises:
            ConfigurationError: a role inheritance cycle, an unknown inherited role, a bad
                permission.
        """
        cfg = coerce_config(AuthorizationConfig, config, "authorization")
        node = cast(Any, self)
        old = getattr(node, "authorizer", None)
        audit = _audit_hook(node) if has_capability(self, "audit_log") else None
        authz = Authorizer(cfg, metrics=node.metrics, audit=audit)
        if isinstance(old, Authorizer):
            authz._conditions.update(old._conditions)
        node.authorizer = authz
        node._onex_chain = None

    @facility
    def authorizer(self) -> Authorizer:
        """The node's authorizer (default config when setup never ran)."""
        node = cast(Any, self)
        audit = _audit_hook(node) if has_capability(self, "audit_log") else None
        return Authorizer(AuthorizationConfig(), metrics=node.metrics, audit=audit)

    async def start_authorization(self) -> None:
        """Check that every configured condition name is registered."""
        cast(Any, self).authorizer.check_conditions()

    def _guard_authorization(self, call: Callable[..., Awaitable[T]]
                             ) -> Callable[..., Awaitable[T]]:
        """Wrap ``process()``: the call's principal needs the process (or action) permission."""
        node = cast(Any, self)
        authz: Authorizer = node.authorizer
        cfg = authz.config
        if cfg.process_permission is None and cfg.action_key is None:
            return call
        check = authz.check
        fixed = cfg.process_permission if cfg.action_key is None else None
        with_resource = cfg.resource_from_input is not None

        if fixed is not None and not with_resource:  # one permission, no resource: inlined
            permission: str = fixed

            @functools.wraps(call)
            async def authorized_fixed(*args: Any, **kwargs: Any) -> T:
                if node.authorizer is not authz:
                    node._onex_chain = None
                    return await MixinAuthorization._guard_authorization(node, call)(
                        *args, **kwargs)
                decision = check(permission)
                if decision[0]:
                    return await call(*args, **kwargs)
                raise authz.denied(permission, _context.principal.get(), decision)

            return authorized_fixed

        @functools.wraps(call)
        async def authorized(*args: Any, **kwargs: Any) -> T:
            if node.authorizer is not authz:
                node._onex_chain = None
                return await MixinAuthorization._guard_authorization(node, call)(*args, **kwargs)
            _authorize(authz, args, kwargs)
            return await call(*args, **kwargs)

        return authorized

    def _guard_sync_authorization(self, call: Callable[..., T]) -> Callable[..., T]:
        """The sync twin of :meth:`_guard_authorization` for a plain ``def process``."""
        node = cast(Any, self)
        authz: Authorizer = node.authorizer
        cfg = authz.config
        if cfg.process_permission is None and cfg.action_key is None:
            return call

        @functools.wraps(call)
        def authorized_sync(*args: Any, **kwargs: Any) -> T:
            if node.authorizer is not authz:
                node._onex_chain = None
                return MixinAuthorization._guard_sync_authorization(node, call)(*args, **kwargs)
            _authorize(authz, args, kwargs)
            return call(*args, **kwargs)

        return authorized_sync


def _authorize(authz: Authorizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    data = args[0] if args else (next(iter(kwargs.values())) if kwargs else None)
    permission = authz.permission_of(data)
    if permission is None:
        return
    if permission == "":
        raise authz._unmapped(data)
    resource = authz.resource_of(data)
    decision = authz.check(permission, None, resource)
    if not decision.allowed:
        raise authz.denied(permission, _context.principal.get(), decision)
