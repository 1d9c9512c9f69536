"""The authorization capability: deny by default, grants, inheritance, explicit deny, superuser,
actions, conditions, scopes, the decision against a brute-force reference, audit, isolation.

The principal is set directly in ``_context.principal`` (what the authentication guard does), and
``authentication`` is a small stand-in registered in a private registry, so these tests depend on
nothing but authorization itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import onex_compose.capabilities
from onex_compose import NodeCompute, Registry, compose, explain
from onex_compose.capabilities import _context
from onex_compose.capabilities import authorization as authz_module
from onex_compose.capabilities._context import Principal
from onex_compose.capabilities.authorization import (
    AuthorizationConfig,
    Authorizer,
    Decision,
    MixinAuthorization,
    PermissionDeniedError,
    permission_matches,
    requires,
)
from onex_compose.exceptions import ConfigurationError, OnexError

CONTRACT = Path(authz_module.__file__).parent / "mixin_authorization.yaml"


class MixinAuthenticationStandIn:
    """Stands in for the authentication capability: the tests set the principal themselves."""

    __onex_capability__ = "authentication"
    __slots__ = ()


def _registry() -> Registry:
    reg = Registry(name="authz-tests")
    reg.load_manifest(onex_compose.capabilities.MANIFEST)
    reg.register(MixinAuthenticationStandIn, name="authentication", replace=True,
                 requires=["metrics"], rank=180)
    return reg


REG = _registry()


@contextlib.contextmanager
def acting_as(p: Principal | None) -> Iterator[None]:
    token = _context.principal.set(p)
    try:
        yield
    finally:
        _context.principal.reset(token)


ALICE = Principal("alice", "jwt", roles=["reader"])
WRITER = Principal("wendy", "jwt", roles=["writer"])
ADMIN = Principal("root", "jwt", roles=["admin"])

ROLES = {
    "reader": {"permissions": ["orders:read", "node:process"]},
    "writer": {"permissions": ["orders:write"], "inherits": ["reader"]},
    "manager": {"permissions": ["orders:*"], "inherits": ["writer"]},
    "auditor": {"permissions": ["*:read"]},
    "admin": {"permissions": [], "description": "everything"},
}


class Orders(NodeCompute):
    async def process(self, input_data: dict[str, Any]) -> str:
        return f"done {input_data.get('action', 'process')}"


class SyncOrders(NodeCompute):
    def process(self, input_data: dict[str, Any]) -> str:
        return "sync done"


Node = compose(Orders, ["authorization"], registry=REG)
SyncNode = compose(SyncOrders, ["authorization"], registry=REG)


def node(**config: Any) -> Any:
    return Node(capability_config={"authorization": config})


# ------------------------------------------------------------------------------------------------
# deny by default


async def test_no_roles_denies_every_call_with_a_how_to_grant_message() -> None:
    n = Node()
    with acting_as(ALICE), pytest.raises(PermissionDeniedError) as info:
        await n.process({})
    err = info.value
    assert (err.permission, err.subject, err.reason) == ("node:process", "alice", "no_permission")
    text = str(err)
    assert text.startswith("subject 'alice' lacks permission 'node:process' (roles: reader)")
    assert "roles: {reader: {permissions: ['node:process']}}" in text
    assert isinstance(err, PermissionError) and isinstance(err, OnexError)
    assert err.onex_retriable is False and err.onex_breaker_neutral is True


async def test_no_principal_is_denied_as_unauthenticated() -> None:
    n = node(roles=ROLES)
    with pytest.raises(PermissionDeniedError) as info:
        await n.process({})
    assert info.value.reason == "unauthenticated" and info.value.subject is None


def test_the_error_carries_no_claims_or_resource_contents() -> None:
    p = Principal("alice", "jwt", roles=["reader"], claims={"ssn": "123-45-6789"})
    authz = Authorizer({"roles": ROLES, "conditions": {"orders:read": "never"}})
    authz.condition("never")(lambda *_: False)
    with pytest.raises(PermissionDeniedError) as info:
        authz.require("orders:read", p, resource={"card": "4111111111111111"})
    assert "123-45-6789" not in str(info.value) and "4111" not in str(info.value)
    assert info.value.reason == "condition_failed"


def test_denied_errors_pickle_with_their_data() -> None:
    import pickle

    err = PermissionDeniedError("a:b", "ann", "no_permission", ["r"])
    back = pickle.loads(pickle.dumps(err))
    assert (back.permission, back.subject, back.reason, str(back)) == (
        "a:b", "ann", "no_permission", str(err))


# ------------------------------------------------------------------------------------------------
# grants


def test_direct_grant() -> None:
    authz = Authorizer({"roles": ROLES})
    d = authz.check("orders:read", ALICE)
    assert d == Decision(True, "granted", "roles.reader.permissions: 'orders:read'")
    assert authz.check("orders:write", ALICE).reason == "no_permission"


@pytest.mark.parametrize(("pattern", "permission", "expected"), [
    ("orders:*", "orders:write", True),
    ("orders:*", "orders:refund:partial", True),
    ("orders:*", "users:write", False),
    ("*:read", "orders:read", True),
    ("*:read", "orders:write", False),
    ("*", "anything:at:all", True),
    ("a:*:c", "a:b:c", True),
    ("a:*:c", "a:b:d", False),
    ("secrets:read:*", "secrets:read:db/password", True),
    ("orders:read", "orders:read:x", False),
])
def test_wildcards(pattern: str, permission: str, expected: bool) -> None:
    assert permission_matches(pattern, permission) is expected
    authz = Authorizer({"roles": {"r": {"permissions": [pattern]}}})
    assert authz.check(permission, Principal("u", "jwt", roles=["r"])).allowed is expected


def test_inheritance_chain() -> None:
    authz = Authorizer({"roles": ROLES})
    manager = Principal("m", "jwt", roles=["manager"])
    assert authz.check("orders:read", WRITER).rule == "roles.reader.permissions: 'orders:read'"
    assert authz.check("orders:refund", manager).allowed
    assert authz.permissions_for(manager) == {"orders:*", "orders:write", "orders:read",
                                              "node:process"}
    assert authz.check("orders:refund", WRITER).reason == "no_permission"


def test_a_cycle_is_refused_at_setup_and_named() -> None:
    roles = {"a": {"inherits": ["b"]}, "b": {"inherits": ["c"]}, "c": {"inherits": ["a"]}}
    with pytest.raises(ConfigurationError, match=r"inheritance cycle a -> b -> c -> a"):
        node(roles=roles)


def test_an_unknown_inherited_role_suggests_the_close_one() -> None:
    with pytest.raises(ConfigurationError) as info:
        node(roles={"reader": {}, "writer": {"inherits": ["raeder"]}})
    assert "roles.writer.inherits: unknown role 'raeder' (did you mean 'reader'?)" in str(
        info.value)


@pytest.mark.parametrize("bad", ["Orders:read", "orders::read", "orders:re ad", "", "orders:r*"])
def test_bad_permission_syntax_is_refused_at_setup(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a permission"):
        node(roles={"r": {"permissions": [bad]}})


def test_explicit_deny_beats_allow() -> None:
    authz = Authorizer({"roles": ROLES, "superuser_role": "admin",
                        "deny": [{"permission": "orders:delete", "roles": ["*"]},
                                 {"permission": "orders:write", "roles": ["manager"]}]})
    manager = Principal("m", "jwt", roles=["manager"])
    d = authz.check("orders:delete", manager)
    assert (d.allowed, d.reason) == (False, "explicit_deny")
    assert authz.check("orders:write", manager).reason == "explicit_deny"
    assert authz.check("orders:write", WRITER).allowed  # the rule names manager only
    assert authz.check("orders:delete", ADMIN).reason == "explicit_deny"  # superuser too
    with pytest.raises(PermissionDeniedError, match="denied explicitly by deny\\[0\\]"):
        authz.require("orders:delete", manager)


def test_superuser() -> None:
    authz = Authorizer({"roles": ROLES, "superuser_role": "admin"})
    assert authz.check("anything:goes", ADMIN) == Decision(True, "superuser",
                                                           "superuser_role: 'admin'")
    assert authz.permissions_for(ADMIN) == {"*"}
    with pytest.raises(ConfigurationError, match="superuser_role: unknown role 'root'"):
        node(roles=ROLES, superuser_role="root")


# ------------------------------------------------------------------------------------------------
# actions, conditions, scopes


async def test_action_mapping_and_an_unmapped_action_is_denied() -> None:
    n = node(roles=ROLES, action_key="action",
             action_permissions={"list": "orders:read", "refund": "orders:refund"})
    with acting_as(WRITER):
        assert await n.process({"action": "list"}) == "done list"
        with pytest.raises(PermissionDeniedError) as info:
            await n.process({"action": "refund"})
        assert info.value.permission == "orders:refund"
        with pytest.raises(PermissionDeniedError) as info:
            await n.process({"action": "drop_tables"})
    assert info.value.reason == "unmapped_action"
    assert "action 'drop_tables' has no entry in action_permissions" in str(info.value)
    counters = n.metrics.snapshot()["counters"]
    assert counters['authz_decisions_total{outcome="deny",reason="unmapped_action"}'] == 1


def test_action_permissions_without_action_key_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="action_key is not"):
        node(action_permissions={"list": "orders:read"})


async def test_same_tenant_condition_allows_or_denies_by_tenant() -> None:
    n = node(roles={"clerk": {"permissions": ["node:process"]}},
             conditions={"node:process": "same_tenant"}, resource_from_input="order")

    @n.authorizer.condition("same_tenant")
    def same_tenant(principal: Principal, resource: Any, permission: str) -> bool:
        return resource is not None and resource.get("tenant") == principal.tenant

    acme = Principal("ann", "jwt", roles=["clerk"], tenant="acme")
    with acting_as(acme):
        assert await n.process({"order": {"tenant": "acme", "id": 1}}) == "done process"
        with pytest.raises(PermissionDeniedError) as info:
            await n.process({"order": {"tenant": "globex", "id": 2}})
    assert info.value.reason == "condition_failed"
    assert "globex" not in str(info.value)
    # decisions that consulted a condition are never cached
    assert n.authorizer._cache == {}


async def test_an_unknown_condition_raises_a_clear_error_at_start_and_first_use() -> None:
    n = node(roles=ROLES, conditions={"orders:read": "same_tenent"},
             deny=[{"permission": "orders:write", "condition": "after_hours"}])
    n.authorizer.condition("same_tenant")(lambda *_: True)
    with pytest.raises(ConfigurationError) as info:
        await n.start()
    text = str(info.value)
    assert "conditions.orders:read: condition 'same_tenent' is not registered (did you mean " \
           "'same_tenant'?)" in text
    assert "deny[0].condition: condition 'after_hours' is not registered" in text
    # first use, without start()
    fresh = node(roles=ROLES, conditions={"orders:read": "nope"})
    with pytest.raises(ConfigurationError, match="condition 'nope' is not registered"):
        fresh.authorizer.check("orders:read", ALICE)
    # a check that needs no condition works
    assert fresh.authorizer.check("node:process", ALICE).allowed


def test_conditions_survive_reconfiguration() -> None:
    n = node(roles=ROLES, conditions={"orders:read": "yes"})
    n.authorizer.condition("yes")(lambda *_: True)
    n.setup_authorization({"roles": ROLES, "conditions": {"orders:read": "yes"}})
    assert n.authorizer.check("orders:read", ALICE).allowed


def test_condition_registration_checks_its_arguments() -> None:
    authz = Authorizer()
    with pytest.raises(ValueError, match="condition name"):
        authz.condition("bad name")

    async def coro(*_: Any) -> bool:
        return True

    with pytest.raises(TypeError, match="plain function"):
        authz.condition("c")(coro)


def test_scope_restriction() -> None:
    authz = Authorizer({"roles": ROLES, "require_scope": True})
    scoped = Principal("s", "jwt", roles=["writer"], scopes="orders:read")
    assert authz.check("orders:read", scoped).allowed
    d = authz.check("orders:write", scoped)
    assert (d.allowed, d.reason) == (False, "missing_scope")
    wide = Principal("w", "jwt", roles=["writer"], scopes=["orders:*"])
    assert authz.check("orders:write", wide).allowed
    # trusted in-process principals carry no token, so no scopes are asked of them
    assert authz.check("orders:write", Principal.system(roles=["writer"])).allowed
    with pytest.raises(PermissionDeniedError, match="scopes do not include it"):
        authz.require("orders:write", scoped)


def test_label_permissions_adds_the_permission_label() -> None:
    n = node(roles=ROLES, label_permissions=True)
    n.authorizer.check("orders:read", ALICE)
    counters = n.metrics.snapshot()["counters"]
    assert counters['authz_decisions_total{outcome="allow",permission="orders:read",'
                    'reason="granted"}'] == 1


def test_condition_free_decisions_are_cached_per_roles_and_permission() -> None:
    authz = Authorizer({"roles": ROLES, "cache_size": 2})
    authz.check("orders:read", ALICE)
    assert (ALICE.roles, "orders:read") in authz._cache
    other = Principal("other", "api_key", roles=["reader"])
    assert authz.check("orders:read", other).allowed  # same roles: the same entry
    authz.check("orders:write", ALICE)
    authz.check("orders:refund", ALICE)
    assert len(authz._cache) <= 2


def test_explain_says_which_rule_decided() -> None:
    authz = Authorizer({"roles": ROLES, "deny": [{"permission": "orders:delete"}]})
    text = authz.explain(WRITER, "orders:read")
    assert text.startswith("ALLOW 'orders:read' for subject 'wendy' (roles: writer; effective: "
                           "reader, writer): granted")
    assert "by roles.reader.permissions: 'orders:read'" in text
    assert "by deny[0]" in authz.explain(WRITER, "orders:delete")
    assert "add it to a role" in authz.explain(WRITER, "users:read")
    assert "unauthenticated" in authz.explain(None, "x:y")


# ------------------------------------------------------------------------------------------------
# the decorator, the sync guard, composition


async def test_requires_decorator_on_node_methods() -> None:
    class Service(NodeCompute):
        async def process(self, input_data: Any) -> Any:
            return input_data

        @requires("orders:refund")
        async def refund(self, order_id: int) -> str:
            return f"refunded {order_id}"

        @requires("orders:read")
        def peek(self) -> str:
            return "peeked"

    n = compose(Service, ["authorization"], registry=REG)(
        capability_config={"authorization": {"roles": ROLES}})
    with acting_as(WRITER):
        assert n.peek() == "peeked"
        with pytest.raises(PermissionDeniedError, match="orders:refund"):
            await n.refund(1)
    with acting_as(Principal("m", "jwt", roles=["manager"])):
        assert await n.refund(2) == "refunded 2"
    with pytest.raises(ValueError, match="is not a permission"):
        requires("Bad Permission")


def test_sync_process_is_guarded() -> None:
    n = SyncNode(capability_config={"authorization": {"roles": ROLES}})
    with acting_as(ALICE):
        assert n.process({}) == "sync done"
    with acting_as(Principal("x", "jwt", roles=["auditor"])), pytest.raises(
            PermissionDeniedError):
        n.process({})


async def test_process_permission_null_checks_nothing() -> None:
    n = node(process_permission=None)
    assert await n.process({}) == "done process"


def test_composition_pulls_in_authentication_and_metrics_and_ranks_the_guard() -> None:
    report = explain(Node).to_dict()
    names = [c["name"] for c in report["capabilities"]]
    assert {"authentication", "metrics", "authorization"} <= set(names)
    assert Node.__onex_pipeline__[-1] == "authorization" or "authorization" in \
        Node.__onex_pipeline__


def test_contract_mirrors_the_config() -> None:
    contract = yaml.safe_load(CONTRACT.read_text())
    defaults = {k: v.default if v.default_factory is None else v.default_factory()
                for k, v in AuthorizationConfig.model_fields.items()}
    assert contract["authorization_config"] == defaults
    assert contract["composition"]["guard_rank"] == 30 and contract["composition"]["rank"] == 190
    assert [m["name"] for m in contract["metrics"]] == ["authz_decisions_total"]
    assert MixinAuthorization.__slots__ == ()
    assert "__init__" not in vars(MixinAuthorization)


def test_repr_explains() -> None:
    assert repr(Authorizer({"roles": ROLES})).startswith(
        "<Authorizer roles=['admin', 'auditor', 'manager', 'reader', 'writer'] deny_rules=0")


# ------------------------------------------------------------------------------------------------
# the decision against a brute-force reference


def _ref_match(pattern: str, permission: str) -> bool:
    parts = pattern.split(":")
    regex = ":".join("[^:]+" if p == "*" else re.escape(p) for p in parts[:-1])
    last = ".+" if parts[-1] == "*" else re.escape(parts[-1])
    regex = f"{regex}:{last}" if regex else last
    return re.fullmatch(regex, permission) is not None


def _ref_closure(roles: dict[str, Any], start: set[str]) -> set[str]:
    reach = {r for r in start if r in roles}
    changed = True
    while changed:  # fixed point: transitive closure by repetition
        changed = False
        for r in list(reach):
            for parent in roles[r]["inherits"]:
                if parent not in reach:
                    reach.add(parent)
                    changed = True
    return reach


def _reference(cfg: dict[str, Any], own: set[str], permission: str) -> bool:
    eff = _ref_closure(cfg["roles"], own)
    for rule in cfg["deny"]:
        if _ref_match(rule["permission"], permission) and (
                "*" in rule["roles"] or eff & set(rule["roles"])):
            return False
    return any(_ref_match(p, permission) for r in eff for p in cfg["roles"][r]["permissions"])


SEG = st.sampled_from(["a", "b", "c", "*"])
PERM = st.lists(SEG, min_size=1, max_size=3).map(":".join)
QUERY = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map(":".join)


@st.composite
def configs(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(1, 6))
    names = [f"r{i}" for i in range(n)]
    roles = {}
    for i, name in enumerate(names):  # edges only to later roles: a DAG
        later = names[i + 1:]
        inherits = draw(st.lists(st.sampled_from(later), unique=True, max_size=3)) if later else []
        roles[name] = {"permissions": draw(st.lists(PERM, max_size=3)), "inherits": inherits}
    deny = draw(st.lists(st.fixed_dictionaries({
        "permission": PERM,
        "roles": st.one_of(st.just(["*"]), st.lists(st.sampled_from(names), min_size=1,
                                                     max_size=2, unique=True))}), max_size=2))
    return {"roles": roles, "deny": deny}


@settings(max_examples=300, deadline=None)
@given(configs(), st.lists(st.sampled_from([f"r{i}" for i in range(7)]), max_size=3),
       st.lists(QUERY, min_size=1, max_size=5))
def test_check_equals_a_brute_force_reference(cfg: dict[str, Any], own: list[str],
                                              queries: list[str]) -> None:
    authz = Authorizer(cfg)
    p = Principal("h", "jwt", roles=own)
    for q in queries:
        expected = _reference(cfg, set(own), q)
        assert authz.check(q, p).allowed is expected, (cfg, own, q)
        assert authz.check(q, p).allowed is expected  # the cached answer too


# ------------------------------------------------------------------------------------------------
# audit and isolation


class _Recorder:
    """Stands in for the audit facility: what the authorizer asks it to record."""

    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []

    async def record(self, action: str, *, resource: Any = None, outcome: str = "success",
                     reason: str | None = None, details: Any = None, actor: Any = None) -> None:
        self.records.append((action, resource, outcome, reason, actor))


async def test_a_denied_direct_require_is_recorded_once_and_none_inside_process() -> None:
    n = node(roles=ROLES)
    recorder = _Recorder()
    n.authorizer._audit = authz_module._audit_hook(_AuditNode(n, recorder))
    with acting_as(ALICE), pytest.raises(PermissionDeniedError):
        n.authorizer.require("orders:write")
    await n.authorizer.drain()
    assert recorder.records == [("authorize", "orders:write", "denied", "no_permission", ALICE)]


class _AuditNode:
    """A node view whose ``audit`` is a recorder (for the hook)."""

    def __init__(self, node: Any, audit: _Recorder) -> None:
        self.authorizer = node.authorizer
        self.audit = audit


def test_a_denied_require_outside_any_loop_is_recorded_too() -> None:
    n = node(roles=ROLES)
    recorder = _Recorder()
    n.authorizer._audit = authz_module._audit_hook(_AuditNode(n, recorder))
    with pytest.raises(PermissionDeniedError):
        n.authorizer.require("orders:write", ALICE)
    assert [r[2] for r in recorder.records] == ["denied"]


async def test_principals_stay_separate_under_concurrency() -> None:
    n = node(roles=ROLES, action_key="action", action_permissions={"w": "orders:write"})
    seen: list[tuple[str, bool]] = []

    async def one(i: int) -> None:
        p = Principal(f"user{i}", "jwt", roles=["writer" if i % 2 else "reader"])
        with acting_as(p):
            await asyncio.sleep(0)
            try:
                await n.process({"action": "w"})
                seen.append((p.subject, True))
            except PermissionDeniedError as exc:
                assert exc.subject == p.subject
                seen.append((p.subject, False))

    await asyncio.gather(*(one(i) for i in range(100)))
    assert sorted(seen) == sorted((f"user{i}", bool(i % 2)) for i in range(100))


# ------------------------------------------------------------------------------------------------
# with the real audit log: every denial recorded exactly once


class Refunds(NodeCompute):
    async def process(self, input_data: dict[str, Any]) -> str:
        if input_data.get("refund"):
            self.authorizer.require("orders:refund")  # type: ignore[attr-defined]
        return "ok"


Audited = compose(Refunds, ["authorization", "audit_log"], registry=REG)


async def test_denials_are_audited_once_with_the_real_audit_log() -> None:
    n = Audited(capability_config={"authorization": {"roles": ROLES},
                                   "database": {"namespace": "authzaudit"}})
    with acting_as(ALICE):
        assert await n.process({}) == "ok"
        with pytest.raises(PermissionDeniedError):
            await n.process({"refund": True})  # require() inside process(): the guard records
        with pytest.raises(PermissionDeniedError):
            n.authorizer.require("orders:delete")  # outside process(): authorization records
    with acting_as(Principal("x", "jwt", roles=["auditor"])), pytest.raises(
            PermissionDeniedError):
        await n.process({})  # the guard itself denies
    await n.authorizer.drain()
    records = [(r.actor, r.action, r.resource, r.outcome, r.reason)
               async for r in n.audit.query()]
    assert [r[3] for r in records].count("denied") == 3
    assert ("alice", "process", None, "success", None) in [
        (a, b, c, d, None) for a, b, c, d, _ in records]
    assert ("alice", "authorize", "orders:delete", "denied", "no_permission") in records
    assert sum(1 for r in records if r[0] == "alice" and r[3] == "denied") == 2
    assert sum(1 for r in records if r[0] == "x") == 1
    assert (await n.audit.verify()).ok
    await n.aclose()


def test_a_failing_audit_never_hides_the_denial() -> None:
    authz = Authorizer({"roles": ROLES}, audit=lambda *_: 1 / 0)
    with pytest.raises(PermissionDeniedError):
        authz.require("orders:write", ALICE)


def test_requires_passes_a_resource_to_conditions() -> None:
    class Docs(NodeCompute):
        async def process(self, input_data: Any) -> Any:
            return input_data

        @requires("docs:read", resource=lambda self, owner: {"owner": owner})
        def read(self, owner: str) -> str:
            return f"doc of {owner}"

    n = compose(Docs, ["authorization"], registry=REG)(capability_config={"authorization": {
        "roles": {"r": {"permissions": ["docs:read"]}}, "conditions": {"docs:read": "own"}}})
    n.authorizer.condition("own")(lambda p, res, perm: res["owner"] == p.subject)
    with acting_as(Principal("ann", "jwt", roles=["r"])):
        assert n.read("ann") == "doc of ann"
        with pytest.raises(PermissionDeniedError) as info:
            n.read("bob")
    assert info.value.reason == "condition_failed"
