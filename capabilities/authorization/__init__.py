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

**Layout.** ``_model.py`` (configuration, errors, permission matching, the protocol),
``_authorizer.py`` (the :class:`Authorizer` facility and :func:`requires`), this module (the
mixin and its guard), the contract ``mixin_authorization.yaml`` beside them.

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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities import _context
from onex_compose.capabilities._context import Principal
from onex_compose.capabilities.authorization._authorizer import Authorizer, Condition, requires
from onex_compose.capabilities.authorization._model import (
    AuthorizationConfig,
    AuthorizationProtocol,
    Decision,
    DenyRule,
    PermissionDeniedError,
    RoleConfig,
    permission_matches,
)

__all__ = [
    "AuthorizationConfig",
    "AuthorizationProtocol",
    "Authorizer",
    "Condition",
    "Decision",
    "DenyRule",
    "MixinAuthorization",
    "PermissionDeniedError",
    "RoleConfig",
    "permission_matches",
    "requires",
]

T = TypeVar("T")


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
