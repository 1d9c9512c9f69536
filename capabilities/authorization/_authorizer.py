"""The ``authorizer`` facility (:class:`Authorizer`) and the :func:`requires` decorator."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from onex_compose import coerce_config
from onex_compose.capabilities import _context
from onex_compose.capabilities._context import Principal
from onex_compose.capabilities.authorization._model import (
    _NAME,
    _NO_PERMISSION,
    _UNAUTHENTICATED,
    AuthorizationConfig,
    Decision,
    PermissionDeniedError,
    _check_permission,
    _Grant,
    permission_matches,
)
from onex_compose.exceptions import ConfigurationError, did_you_mean

F = TypeVar("F", bound=Callable[..., Any])

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
        permission: str | None
        if cfg.action_key is None:
            permission = cfg.process_permission
            return permission
        action = _lookup(data, cfg.action_key)
        if not isinstance(action, str) or action not in cfg.action_permissions:
            return ""
        permission = cfg.action_permissions[action]
        return permission

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
