"""The authentication capability: the attack table (one test id per attack), JWKS rotation and
outages, API keys (config and SQLite stores), principal isolation, the guard, no leaks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import pickle
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from onex_compose import NodeCompute, compose, explain
from onex_compose.capabilities import _context
from onex_compose.capabilities._context import (
    Credentials,
    CredentialsScope,
    ManualClock,
    Principal,
)
from onex_compose.capabilities.authentication import (
    AuthenticationConfig,
    AuthenticationError,
    Authenticator,
)
from onex_compose.capabilities.metrics import Metrics
from onex_compose.exceptions import ConfigurationError

RSA1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROGUE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC1 = ec.generate_private_key(ec.SECP256R1())
HS_SECRET = "hs-secret-0123456789-abcdefghijklmnop"
PEPPER = "pepper-0123456789-abcdefghijklmnop"


def pub_pem(key: Any) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def priv_pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def raw_token(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A token built by hand (for headers PyJWT refuses to write)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 600, "roles": ["writer"]}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def rs_token(key: Any = RSA1, kid: str | None = "k1", alg: str = "RS256",
             headers: dict[str, Any] | None = None, **extra: Any) -> str:
    hdr = dict(headers or {})
    if kid is not None:
        hdr["kid"] = kid
    return jwt.encode(claims(**extra), key, algorithm=alg, headers=hdr)


def hs_token(**extra: Any) -> str:
    return jwt.encode(claims(**extra), HS_SECRET, algorithm="HS256")


class Echo(NodeCompute):
    async def process(self, data: Any) -> Any:
        who = self.current_principal()  # type: ignore[attr-defined]
        return None if who is None else who.subject


class SyncEcho(NodeCompute):
    def process(self, data: Any) -> Any:
        who = self.current_principal()  # type: ignore[attr-defined]
        return None if who is None else who.subject


Node = compose(Echo, ["authentication"])
SyncNode = compose(SyncEcho, ["authentication"])

RS_CFG: dict[str, Any] = {"jwt_public_keys": {"k1": pub_pem(RSA1)}}
HS_CFG: dict[str, Any] = {"jwt_algorithms": ["HS256"], "jwt_secret": HS_SECRET}


def rs_node(**cfg: Any) -> Any:
    return Node(capability_config={"authentication": {**RS_CFG, **cfg}})


def hs_node(**cfg: Any) -> Any:
    return Node(capability_config={"authentication": {**HS_CFG, **cfg}})


async def call(node: Any, token: str | None = None, **creds: Any) -> Any:
    if token is not None:
        creds["bearer"] = token
    if not creds:
        return await node.process("x")
    with node.credentials(**creds):
        return await node.process("x")


async def rejected(node: Any, token: str | None = None, **creds: Any) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        await call(node, token, **creds)
    err = info.value
    if token is not None:
        assert token not in str(err) and token not in err.www_authenticate
    return err


# ------------------------------------------------------------------------------------------------
# the attack table: rejected tokens


async def test_accepts_a_valid_rs256_token_and_sets_the_principal() -> None:
    node = rs_node()
    assert await call(node, rs_token()) == "alice"
    who = await node.authenticator.authenticate(Credentials("bearer", rs_token()))
    assert who.roles == frozenset({"writer"}) and who.key_id == "k1" and who.scheme == "jwt"
    assert node.current_principal() is None  # reset after the call


async def test_attack_no_credentials() -> None:
    err = await rejected(rs_node())
    assert err.reason == "missing" and err.www_authenticate == 'Bearer realm="onex"'
    assert "node.credentials(bearer=...)" in str(err)


async def test_attack_garbage_token() -> None:
    err = await rejected(rs_node(), "not-a-jwt")
    assert err.reason == "malformed"
    assert (await rejected(rs_node(), "a.b.c")).reason == "malformed"


async def test_attack_alg_none() -> None:
    token = raw_token({"alg": "none", "typ": "JWT"}, claims())
    err = await rejected(rs_node(), token)
    assert err.reason == "algorithm_not_allowed" and "'none'" in str(err)


async def test_attack_hs256_signed_with_the_rs256_public_pem_as_hmac_secret() -> None:
    pem = pub_pem(RSA1).encode()
    token = raw_token({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims(),
                      lambda data: hmac.new(pem, data, hashlib.sha256).digest())
    err = await rejected(rs_node(), token)
    assert err.reason == "algorithm_not_allowed" and "RS256" in str(err)


def test_attack_config_mixing_rs256_and_hs256_is_refused_at_setup() -> None:
    with pytest.raises(ConfigurationError, match="algorithm confusion"):
        Node(capability_config={"authentication": {
            **RS_CFG, "jwt_algorithms": ["RS256", "HS256"], "jwt_secret": HS_SECRET}})


async def test_attack_rs256_token_from_another_key() -> None:
    err = await rejected(rs_node(), rs_token(ROGUE))
    assert err.reason == "bad_signature"


async def test_attack_expired_beyond_the_leeway_and_accepted_within_it() -> None:
    now = int(time.time())
    err = await rejected(rs_node(), rs_token(exp=now - 60))
    assert err.reason == "expired"
    assert "token expired 6" in str(err) and "(leeway 30 s)" in str(err)
    assert await call(rs_node(), rs_token(exp=now - 10)) == "alice"


async def test_attack_nbf_in_the_future() -> None:
    err = await rejected(rs_node(), rs_token(nbf=int(time.time()) + 120))
    assert err.reason == "not_yet_valid"
    assert await call(rs_node(), rs_token(nbf=int(time.time()) + 10)) == "alice"


async def test_attack_iat_older_than_max_age() -> None:
    now = int(time.time())
    err = await rejected(rs_node(jwt_max_age=60), rs_token(iat=now - 300))
    assert err.reason == "too_old"
    assert await call(rs_node(jwt_max_age=60), rs_token(iat=now - 70)) == "alice"
    assert (await rejected(rs_node(jwt_max_age=60), rs_token(iat=None))).reason == \
        "missing_claim"


async def test_attack_wrong_audience() -> None:
    node = rs_node(jwt_audience="orders-api")
    assert (await rejected(node, rs_token(aud="billing"))).reason == "wrong_audience"
    assert await call(node, rs_token(aud=["billing", "orders-api"])) == "alice"
    assert (await rejected(node, rs_token())).reason == "missing_claim"
    # an audience the node does not expect is refused too (RFC 7519 4.1.3)
    assert (await rejected(rs_node(), rs_token(aud="billing"))).reason == "wrong_audience"


async def test_attack_wrong_issuer() -> None:
    node = rs_node(jwt_issuer="https://issuer.example")
    assert (await rejected(node, rs_token(iss="https://evil.example"))).reason == "wrong_issuer"
    assert await call(node, rs_token(iss="https://issuer.example")) == "alice"


async def test_attack_missing_exp() -> None:
    err = await rejected(rs_node(), rs_token(exp=None))
    assert err.reason == "missing_claim" and "'exp'" in str(err)


async def test_attack_oversized_token_is_malformed_and_not_parsed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    token = rs_token(pad="x" * 9000)
    node = rs_node()
    from onex_compose.capabilities.authentication import _jwt

    def no_parse(*_: Any) -> Any:
        raise AssertionError("an oversized token must not be parsed")

    monkeypatch.setattr(_jwt, "_b64", no_parse)
    err = await rejected(node, token)
    assert err.reason == "malformed" and "8 KiB" in str(err)


async def test_attack_crit_header_and_bad_typ_are_malformed() -> None:
    node = rs_node()
    crit = rs_token(headers={"crit": ["exp"], "exp": 1})
    assert (await rejected(node, crit)).reason == "malformed"
    assert (await rejected(node, rs_token(headers={"typ": "JWE"}))).reason == "malformed"
    assert await call(node, rs_token(headers={"typ": "at+jwt"})) == "alice"


async def test_attack_unknown_kid_without_jwks() -> None:
    err = await rejected(rs_node(), rs_token(RSA2, kid="k2"))
    assert err.reason == "unknown_key" and "'k2'" in str(err)


async def test_an_ec_token_under_an_rsa_key_id_is_refused() -> None:
    node = rs_node(jwt_algorithms=["RS256", "ES256"])
    assert (await rejected(node, rs_token(EC1, kid="k1", alg="ES256"))).reason == "unknown_key"


async def test_a_token_without_kid_uses_the_only_fitting_key() -> None:
    assert await call(rs_node(), rs_token(kid=None)) == "alice"


# ------------------------------------------------------------------------------------------------
# configuration


def test_a_node_without_keys_fails_at_setup_naming_every_missing_piece() -> None:
    with pytest.raises(ConfigurationError) as info:
        Node(capability_config={"authentication": {"schemes": ["jwt", "api_key"]}})
    text = str(info.value)
    assert "no JWT verification key" in text and "api_key_pepper" in text
    assert len(info.value.problems) == 2


@pytest.mark.parametrize("algs, needle", [
    ([], "empty"), (["none"], "'none' is forbidden"), (["RS257"], "unknown algorithm 'RS257'"),
    (["HS256", "ES256"], "algorithm confusion")])
def test_bad_algorithm_lists_are_refused_at_setup(algs: list[str], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        Authenticator(AuthenticationConfig(jwt_algorithms=algs, **RS_CFG))


def test_hs_with_a_pem_is_refused_and_a_short_or_pem_secret_too() -> None:
    with pytest.raises(ConfigurationError, match="algorithm confusion"):
        Authenticator(AuthenticationConfig(**HS_CFG, jwt_public_keys={"k1": pub_pem(RSA1)}))
    with pytest.raises(ConfigurationError, match="at least 32 bytes") as info:
        Authenticator(AuthenticationConfig(jwt_algorithms=["HS256"], jwt_secret="short"))
    assert "short" not in str(info.value)
    pem = pub_pem(RSA1)
    with pytest.raises(ConfigurationError, match="looks like a PEM") as info:
        Authenticator(AuthenticationConfig(jwt_algorithms=["HS256"], jwt_secret=pem))
    assert pem not in str(info.value)


def test_the_secret_comes_from_the_environment_and_stays_out_of_pickles(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEX_JWT_SECRET", HS_SECRET)
    node = Node(capability_config={"authentication": {"jwt_algorithms": ["HS256"]}})
    data = pickle.dumps(node)
    assert HS_SECRET.encode() not in data
    back = pickle.loads(data)
    assert asyncio.run(call(back, node.authenticator.issue_token("bob"))) == "bob"


def test_a_bad_public_key_is_named_without_its_value() -> None:
    with pytest.raises(ConfigurationError, match=r"jwt_public_keys\['k1'\]"):
        Authenticator(AuthenticationConfig(jwt_public_keys={"k1": "not a pem"}))


def test_sensitive_config_values_never_appear_in_validation_errors() -> None:
    with pytest.raises(Exception) as info:
        AuthenticationConfig(jwt_secret=12345678901234567890, jwt_leeway=999)  # type: ignore
    assert "12345678901234567890" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# issuing


async def test_issued_rs256_and_es256_tokens_verify_on_the_issuing_node() -> None:
    for key, alg in ((RSA1, "RS256"), (EC1, "ES256")):
        node = Node(capability_config={"authentication": {
            "jwt_algorithms": [alg], "issuer_private_key": priv_pem(key),
            "jwt_issuer": "me", "jwt_audience": "svc", "tenant_claim": "tid"}})
        token = node.authenticator.issue_token("carol", roles=["admin"], scopes="a:read b:write",
                                               tenant="t1", ttl=60)
        who = await node.authenticator.authenticate("Bearer " + token)
        assert (who.subject, who.roles, who.scopes, who.tenant) == (
            "carol", frozenset({"admin"}), frozenset({"a:read", "b:write"}), "t1")
        assert who.expires_at is not None and who.expires_at - time.time() <= 61


def test_issue_token_without_a_signing_key_says_which_to_set() -> None:
    auth = Authenticator(AuthenticationConfig(**RS_CFG))
    with pytest.raises(ConfigurationError, match="issuer_private_key"):
        auth.issue_token("x")


async def test_roles_and_scopes_claims_follow_dotted_paths_and_lists() -> None:
    node = rs_node(roles_claim="realm_access.roles", scopes_claim="scp")
    token = rs_token(realm_access={"roles": ["a", "b"]}, scp=["x:read"])
    who = await node.authenticator.authenticate(Credentials("bearer", token))
    assert who.roles == frozenset({"a", "b"}) and who.scopes == frozenset({"x:read"})


# ------------------------------------------------------------------------------------------------
# the verify cache


async def test_repeated_tokens_hit_the_verify_cache_until_min_exp_ttl() -> None:
    clock = ManualClock(time.time())
    metrics = Metrics()
    auth = Authenticator(AuthenticationConfig(**RS_CFG, verify_cache_ttl=60, jwt_leeway=0),
                         metrics=metrics, clock=clock)
    token = rs_token(exp=int(clock()) + 30)
    first = await auth.authenticate(Credentials("bearer", token))
    assert await auth.authenticate(Credentials("bearer", token)) is first
    counters = metrics.snapshot()["counters"]
    assert counters['auth_verify_cache_total{result="hit"}'] == 1
    assert counters['auth_verify_cache_total{result="miss"}'] == 1
    clock.advance(31)  # past exp, before now + ttl: the cache must not outlive the token
    with pytest.raises(AuthenticationError) as info:
        await auth.authenticate(Credentials("bearer", token))
    assert info.value.reason == "expired"
    assert list(auth._verifier.cache.keys()) != [token.encode()]  # keyed by digest, not token


async def test_the_verify_cache_is_bounded() -> None:
    auth = Authenticator(AuthenticationConfig(**HS_CFG, verify_cache_size=3))
    for i in range(10):
        await auth.authenticate(Credentials("bearer", hs_token(sub=f"u{i}")))
    assert len(auth._verifier.cache) == 3


# ------------------------------------------------------------------------------------------------
# JWKS: a stdlib HTTP server on 127.0.0.1


def jwk_of(key: Any, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, use="sig", alg="RS256")
    return dict(jwk)


class JwksServer:
    """Serves ``self.body`` at /jwks.json; ``mode`` ``ok``, ``down`` (HTTP 503) or ``garbage``."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = [jwk_of(RSA1, "k1")]
        self.mode = "ok"
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.hits += 1
                if outer.mode == "down":
                    self.send_response(503)
                    self.end_headers()
                    return
                body = (b"<html>not json" if outer.mode == "garbage"
                        else json.dumps({"keys": outer.keys}).encode())
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


def jwks_auth(url: str, clock: ManualClock, **cfg: Any) -> Authenticator:
    return Authenticator(AuthenticationConfig(jwks_url=url, verify_cache_size=0, **cfg),
                         metrics=Metrics(), clock=clock)


async def test_jwks_unknown_kid_fetches_exactly_once_then_rejects(
        jwks_server: JwksServer) -> None:
    clock = ManualClock(time.time())
    auth = jwks_auth(jwks_server.url, clock)
    assert await auth.refresh_jwks() == 1
    clock.advance(31)
    before = jwks_server.hits
    with pytest.raises(AuthenticationError) as info:
        await auth.authenticate(Credentials("bearer", rs_token(RSA2, kid="k9")))
    assert info.value.reason == "unknown_key" and jwks_server.hits == before + 1
    clock.advance(5)  # within jwks_min_refresh_interval: no second fetch
    with pytest.raises(AuthenticationError):
        await auth.authenticate(Credentials("bearer", rs_token(RSA2, kid="k9")))
    assert jwks_server.hits == before + 1


async def test_jwks_rotation_k2_accepted_after_refresh_and_k1_still_works(
        jwks_server: JwksServer) -> None:
    clock = ManualClock(time.time())
    auth = jwks_auth(jwks_server.url, clock)
    assert (await auth.authenticate(Credentials("bearer", rs_token()))).subject == "alice"
    jwks_server.keys = [jwk_of(RSA1, "k1"), jwk_of(RSA2, "k2")]
    clock.advance(31)
    who = await auth.authenticate(Credentials("bearer", rs_token(RSA2, kid="k2", sub="bob")))
    assert who.subject == "bob"
    assert (await auth.authenticate(Credentials("bearer", rs_token()))).subject == "alice"
    snap = auth.metrics.snapshot()["counters"]
    assert snap['auth_jwks_refresh_total{outcome="ok"}'] == 2


async def test_jwks_server_down_cached_keys_still_accepted_and_health_degraded(
        jwks_server: JwksServer) -> None:
    clock = ManualClock(time.time())
    auth = jwks_auth(jwks_server.url, clock)
    await auth.refresh_jwks()
    assert (await auth.health())["status"] == "healthy"
    jwks_server.mode = "down"
    clock.advance(60)
    assert await auth.refresh_jwks() == 0
    assert (await auth.authenticate(Credentials("bearer", rs_token()))).subject == "alice"
    report = await auth.health()
    assert report["status"] == "degraded" and "503" in report["jwks"]["last_error"]
    clock.advance(300)  # past jwks_cache_ttl with no good refresh: no usable key
    assert (await auth.health())["status"] == "unhealthy"
    with pytest.raises(AuthenticationError) as info:
        await auth.authenticate(Credentials("bearer", rs_token()))
    assert info.value.reason == "unknown_key"


async def test_jwks_garbage_is_degraded_not_a_crash(jwks_server: JwksServer) -> None:
    clock = ManualClock(time.time())
    auth = jwks_auth(jwks_server.url, clock)
    await auth.refresh_jwks()
    jwks_server.mode = "garbage"
    clock.advance(31)
    assert await auth.refresh_jwks() == 0
    assert (await auth.health())["status"] == "degraded"
    assert (await auth.authenticate(Credentials("bearer", rs_token()))).subject == "alice"
    fresh = jwks_auth(jwks_server.url, clock)
    assert (await fresh.health())["status"] == "unhealthy"


async def test_jwks_through_httpx_mock_transport_and_the_sync_path() -> None:
    import httpx

    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(200, json={"keys": [jwk_of(RSA1, "k1")]})

    auth = Authenticator(AuthenticationConfig(jwks_url="https://issuer.example/jwks"),
                         jwks_transport=httpx.MockTransport(handler))
    assert (await auth.authenticate(Credentials("bearer", rs_token()))).subject == "alice"
    assert calls == ["https://issuer.example/jwks"]
    sync_auth = Authenticator(AuthenticationConfig(jwks_url="https://issuer.example/jwks"),
                              jwks_transport=httpx.MockTransport(handler))
    assert sync_auth.authenticate_sync(Credentials("bearer", rs_token())).subject == "alice"
    assert len(calls) == 2


async def test_jwks_file_is_loaded_at_setup_and_reread_on_refresh(tmp_path: Any) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk_of(RSA1, "k1")]}))
    clock = ManualClock(time.time())
    auth = Authenticator(AuthenticationConfig(jwks_file=str(path)), clock=clock)
    assert (await auth.authenticate(Credentials("bearer", rs_token()))).subject == "alice"
    path.write_text(json.dumps({"keys": [jwk_of(RSA2, "k2")]}))
    clock.advance(31)
    who = await auth.authenticate(Credentials("bearer", rs_token(RSA2, kid="k2")))
    assert who.key_id == "k2"
    with pytest.raises(ConfigurationError, match="jwks_file"):
        Authenticator(AuthenticationConfig(jwks_file=str(tmp_path / "missing.json")))


def test_a_node_fetches_its_jwks_at_start(jwks_server: JwksServer) -> None:
    node = Node(capability_config={"authentication": {"jwks_url": jwks_server.url}})

    async def main() -> Any:
        await node.start()
        try:
            return await call(node, rs_token())
        finally:
            await node.aclose()

    assert asyncio.run(main()) == "alice"
    assert jwks_server.hits == 1


# ------------------------------------------------------------------------------------------------
# API keys (config store; the database store below)


def api_auth(**cfg: Any) -> tuple[Authenticator, str]:
    base = Authenticator(AuthenticationConfig(schemes=["api_key"], api_key_pepper=PEPPER))
    created = base.generate_api_key()
    entry = {"hash": base.hash_api_key(created.key), "subject": "ci-bot", "roles": ["reader"]}
    auth = Authenticator(AuthenticationConfig(
        schemes=["api_key"], api_key_pepper=PEPPER,
        api_keys={created.key_id: entry}, **cfg), metrics=Metrics())
    return auth, created.key


async def test_api_key_valid_is_accepted() -> None:
    auth, key = api_auth()
    who = await auth.authenticate(Credentials("api_key", key))
    assert (who.subject, who.scheme, who.roles) == ("ci-bot", "api_key", frozenset({"reader"}))
    assert (await auth.authenticate("ApiKey " + key)).subject == "ci-bot"
    assert (await auth.authenticate("Bearer " + key)).subject == "ci-bot"


async def test_api_key_one_byte_changed_is_rejected() -> None:
    auth, key = api_auth()
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    with pytest.raises(AuthenticationError) as info:
        await auth.authenticate(Credentials("api_key", flipped))
    assert info.value.reason == "unknown_api_key" and flipped not in str(info.value)


async def test_api_key_unknown_id_is_rejected() -> None:
    auth, key = api_auth()
    other = auth.generate_api_key().key
    with pytest.raises(AuthenticationError) as info:
        await auth.authenticate(Credentials("api_key", other))
    assert info.value.reason == "unknown_api_key"
    with pytest.raises(AuthenticationError) as info:
        await auth.authenticate(Credentials("api_key", "nope"))
    assert info.value.reason == "malformed"


async def test_api_key_comparison_uses_hmac_compare_digest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    auth, key = api_auth()
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    await auth.authenticate(Credentials("api_key", key))
    assert len(seen) == 1
    stored = bytes.fromhex(auth.hash_api_key(key))
    assert seen[0][1] == stored and key.encode() not in seen[0]  # hash vs hash, never the key


def test_api_key_hashes_are_hmac_sha256_of_the_secret_under_the_pepper() -> None:
    auth, key = api_auth()
    secret = key.split("_", 2)[2]
    assert auth.hash_api_key(key) == hmac.new(PEPPER.encode(), secret.encode(),
                                              hashlib.sha256).hexdigest()
    assert secret not in auth.hash_api_key(key)
    long_pepper = "p" * 100  # longer than the SHA-256 block: hashed first (RFC 2104)
    long = Authenticator(AuthenticationConfig(schemes=["api_key"], api_key_pepper=long_pepper))
    assert long.hash_api_key(key) == hmac.new(long_pepper.encode(), secret.encode(),
                                              hashlib.sha256).hexdigest()


async def test_create_and_revoke_with_the_config_store_point_to_hash_api_key() -> None:
    auth, _ = api_auth()
    with pytest.raises(ConfigurationError, match="hash_api_key"):
        await auth.create_api_key("x")
    with pytest.raises(ConfigurationError, match="api_key_store: database"):
        await auth.revoke_api_key("abc")


DbNode = compose(Echo, ["authentication", "database"])


def db_node(namespace: str, **db: Any) -> Any:
    return DbNode(capability_config={
        "authentication": {"schemes": ["api_key", "jwt"], "api_key_pepper": PEPPER,
                           "api_key_store": "database", **HS_CFG},
        "database": {"namespace": namespace, **db}})


async def test_database_store_create_verify_revoke_on_sqlite(tmp_path: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    node, other = db_node("authk", url=url), db_node("authk", url=url)
    created = await node.authenticator.create_api_key("ci-bot", roles=["reader"])
    assert "ci-bot" not in created.key and repr(created).endswith("key=***)")
    assert await call(node, api_key=created.key) == "ci-bot"
    assert await call(other, api_key=created.key) == "ci-bot"  # another node, same table
    row = await node.db.fetch_one("SELECT hash FROM authk_api_keys")
    assert created.key.split("_", 2)[2] not in str(row["hash"])
    await node.authenticator.revoke_api_key(created.key_id)
    err = await rejected(other, api_key=created.key)  # no cache: revoked at once everywhere
    assert err.reason == "revoked"
    flipped = created.key[:-1] + ("A" if created.key[-1] != "A" else "B")
    assert (await rejected(node, api_key=flipped)).reason == "unknown_api_key"
    with pytest.raises(KeyError):
        await node.authenticator.revoke_api_key(created.key_id)
    await node.db.aclose()
    await other.db.aclose()


def test_database_store_without_database_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="needs the database capability"):
        Node(capability_config={"authentication": {
            "schemes": ["api_key"], "api_key_pepper": PEPPER, "api_key_store": "database"}})


def test_the_sync_guard_verifies_jwts_and_api_keys() -> None:
    auth, key = api_auth()
    node = SyncNode(capability_config={"authentication": {
        **HS_CFG, "schemes": ["jwt", "api_key"], "api_key_pepper": PEPPER,
        "api_keys": {k: v.model_dump() for k, v in auth.config.api_keys.items()}}})
    with node.credentials(bearer=hs_token()):
        assert node.process("x") == "alice"
    with node.credentials(api_key=key):
        assert node.process("x") == "ci-bot"
    with pytest.raises(AuthenticationError) as info:
        node.process("x")
    assert info.value.reason == "missing"
    assert 'ApiKey realm="onex"' in info.value.www_authenticate


# ------------------------------------------------------------------------------------------------
# the guard and the call context


async def test_principal_isolation_under_100_concurrent_calls() -> None:
    class Slow(NodeCompute):
        async def process(self, data: Any) -> Any:
            await asyncio.sleep(0.001 * (data % 7))
            return self.current_principal().subject  # type: ignore[attr-defined]

    node = compose(Slow, ["authentication"])(capability_config={"authentication": HS_CFG})
    tokens = [hs_token(sub=f"user{i}") for i in range(100)]

    async def one(i: int) -> Any:
        with node.credentials(bearer=tokens[i]):
            return await node.process(i)

    assert await asyncio.gather(*(one(i) for i in range(100))) == [
        f"user{i}" for i in range(100)]


async def test_as_principal_runs_trusted_jobs_without_credentials() -> None:
    node = hs_node()
    with node.authenticator.as_principal(Principal.system()):
        assert await node.process("x") == "system"
    async with node.authenticator.as_principal(Principal.system("cron")):
        assert await node.process("x") == "cron"
    assert node.current_principal() is None


async def test_credentials_win_over_an_enclosing_principal() -> None:
    node = hs_node()
    with node.authenticator.as_principal(Principal.system()):
        assert await call(node, hs_token(sub="dave")) == "dave"


async def test_required_false_runs_anonymous_calls_but_rejects_bad_credentials() -> None:
    node = hs_node(required=False)
    assert await call(node) is None
    assert (await rejected(node, "garbage")).reason == "malformed"


def test_credentials_scope_forms_and_errors() -> None:
    with CredentialsScope(authorization="ApiKey onex_abc_def") as c:
        assert (c.scheme, _context.credentials.get()) == ("api_key", c)
    with CredentialsScope(authorization="Basic dXNlcjpwYXNz") as c:
        assert c.scheme == "basic"
    for bad in ({}, {"bearer": "a", "api_key": "b"}, {"bearer": " "}, {"authorization": "Bearer"}):
        with pytest.raises(ValueError) as info:
            CredentialsScope(**bad)
        assert "a" not in bad.values() or "'a'" not in str(info.value)


async def test_an_unsupported_scheme_and_a_disabled_scheme_are_malformed() -> None:
    node = hs_node()
    err = await rejected(node, authorization="Basic dXNlcjpwYXNz")
    assert err.reason == "malformed" and "'basic'" in str(err)
    assert (await rejected(node, api_key="onex_abc_def")).reason == "malformed"


async def test_metrics_count_attempts_by_scheme_and_outcome() -> None:
    node = hs_node()
    await call(node, hs_token())
    await rejected(node, "garbage")
    await rejected(node)
    counters = node.metrics.snapshot()["counters"]
    assert counters['auth_attempts_total{outcome="ok",scheme="jwt"}'] == 1
    assert counters['auth_attempts_total{outcome="malformed",scheme="jwt"}'] == 1
    assert counters['auth_attempts_total{outcome="missing",scheme="jwt"}'] == 1


def test_errors_pickle_and_carry_their_http_challenge() -> None:
    err = AuthenticationError("expired", "token expired 42 s ago (leeway 30 s)", scheme="jwt")
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.scheme, str(back)) == ("expired", "jwt", str(err))
    assert isinstance(err, PermissionError) and err.onex_breaker_neutral
    assert 'error="invalid_token"' in back.www_authenticate
    with pytest.raises(ValueError, match="unknown authentication failure reason"):
        AuthenticationError("nope", "x")


async def test_health_check_reports_through_the_node() -> None:
    node = compose(Echo, ["authentication", "health_check"])(
        capability_config={"authentication": RS_CFG})
    report = await node.health.check()
    assert report["checks"]["authentication"]["status"] == "healthy" or \
        report["status"] == "healthy"


def test_explain_lists_the_guard_at_rank_22_outside_caching() -> None:
    Service = compose(Echo, ["authentication", "caching", "metrics"])
    report = explain(Service).to_dict()
    pipeline = report["pipeline"]
    assert pipeline.index("authentication") < pipeline.index("caching")
    assert pipeline.index("metrics") < pipeline.index("authentication")


async def test_log_records_carry_the_actor_inside_an_authenticated_call() -> None:
    from onex_compose.capabilities._log import base_logger

    class Logs(NodeCompute):
        async def process(self, data: Any) -> Any:
            self.log.info("working")  # type: ignore[attr-defined]
            return data

    node = compose(Logs, ["authentication", "logging"])(
        capability_config={"authentication": HS_CFG})
    seen: list[dict[str, Any]] = []
    sink = base_logger.add(lambda m: seen.append(dict(m.record["extra"])), level="DEBUG")
    try:
        await call(node, hs_token(sub="erin"))
        node.log.info("outside")
    finally:
        base_logger.remove(sink)
    working = [e for e in seen if e.get("actor") == "erin"]
    assert working and all("actor" not in e for e in seen if e not in working)


# ------------------------------------------------------------------------------------------------
# no leaks


async def test_no_leak_of_tokens_keys_or_secrets_anywhere(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from onex_compose.capabilities._log import base_logger

    pepper = "PEPPER-marker-0123456789-abcdefghij"
    secret = "HSSECRET-marker-0123456789-abcdefgh"
    Service = compose(Echo, ["authentication", "logging", "health_check"])
    base = Authenticator(AuthenticationConfig(schemes=["api_key"], api_key_pepper=pepper))
    created = base.generate_api_key()
    node = Service(capability_config={
        "authentication": {"schemes": ["jwt", "api_key"], "jwt_algorithms": ["HS256"],
                           "jwt_secret": secret, "api_key_pepper": pepper,
                           "api_keys": {created.key_id: {"hash": base.hash_api_key(created.key),
                                                         "subject": "bot"}}},
        "logging": {"level": "DEBUG"}})
    token = node.authenticator.issue_token("alice")
    lines: list[str] = []
    sink = base_logger.add(lambda m: lines.append(str(m) + repr(m.record["extra"])),
                           level="DEBUG")
    texts: list[str] = []
    try:
        await call(node, token)
        await call(node, api_key=created.key)
        for bad in (token[:-2] + "xx", created.key[:-1] + "Z", token + "." + token):
            try:
                await call(node, bad)
            except AuthenticationError as exc:
                texts += [str(exc), repr(exc), exc.www_authenticate]
        node.log.debug("credentials {}", _context.Credentials("bearer", token))
    finally:
        base_logger.remove(sink)
    texts += lines + [repr(node), repr(node.authenticator), str(explain(Service)),
                      json.dumps(explain(Service).to_dict(), default=str),
                      json.dumps(node.metrics.snapshot(), default=str),
                      json.dumps(await node.health.check(), default=str),
                      repr(node.authenticator.config), str(node.authenticator.config)]
    blob = "\n".join(texts)
    for marker in (token, created.key, created.key.split("_", 2)[2], pepper, secret):
        assert marker not in blob


# ------------------------------------------------------------------------------------------------
# audit integration (audit_log is built on its own branch; this runs once it is registered)


def _audit_registered() -> bool:
    from onex_compose import default_registry

    try:
        return "audit_log" in default_registry.names()
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _audit_registered(),
                    reason="audit_log is not registered in this build (it lands from branch "
                           "s4-audit); authentication's audit wiring is tested once it is")
async def test_rejections_are_audited_as_authenticate_denied_with_the_reason(
        tmp_path: Any) -> None:
    Service = compose(Echo, ["authentication", "audit_log"])
    node = Service(capability_config={"authentication": HS_CFG,
                                      "database": {"namespace": "authaudit"}})
    await rejected(node, "garbage")
    await rejected(node)
    assert await call(node, hs_token()) == "alice"
    records = [r async for r in node.audit.query(action="authenticate")]
    assert [(r.outcome, r.reason, r.actor) for r in records] == [
        ("denied", "malformed", None), ("denied", "missing", None)]
    assert "garbage" not in json.dumps([r.details for r in records], default=str)
    # the audit guard sits inside authentication: the successful call is recorded with its actor
    done = [r async for r in node.audit.query(actor="alice")]
    assert [(r.action, r.outcome, r.actor_scheme) for r in done] == [
        ("process", "success", "jwt")]
    assert (await node.audit.verify()).ok


@pytest.mark.skipif(not _audit_registered(),
                    reason="audit_log is not registered in this build (it lands from branch "
                           "s4-audit); authentication's audit wiring is tested once it is")
def test_sync_guard_rejections_are_audited_too(tmp_path: Any) -> None:
    Service = compose(SyncEcho, ["authentication", "audit_log"])
    node = Service(capability_config={
        "authentication": HS_CFG,
        "database": {"namespace": "authaudits", "url": f"sqlite+aiosqlite:///{tmp_path}/a.db"}})
    with pytest.raises(AuthenticationError), node.credentials(bearer="garbage"):
        node.process("x")
    with node.credentials(bearer=hs_token(sub="sync-user")):
        assert node.process("x") == "sync-user"

    async def read() -> list[Any]:
        return [(r.action, r.outcome, r.reason, r.actor)
                async for r in node.audit.query()]

    assert asyncio.run(read()) == [("authenticate", "denied", "malformed", None),
                                   ("process", "success", None, "sync-user")]


def test_the_docstring_examples_run() -> None:
    import doctest

    from onex_compose.capabilities import authentication
    from onex_compose.capabilities.authentication import _model

    for module in (authentication, _model, _context):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__
