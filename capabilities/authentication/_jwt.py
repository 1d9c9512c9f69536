"""authentication: JWT verification (allow-listed algorithms, key ring, JWKS) and issuing.

Signatures are verified with PyJWT's algorithm objects (``jwt.algorithms``); the header, the
claims and the key selection are handled here, in one pass over the token. ``jwt.decode`` would
parse the token a second time (the ``kid`` has to be read before the key is known) and reports
its failures as exception types that do not map one-to-one onto this capability's reasons
(``too_old`` against ``jwt_max_age`` with the leeway, ``crit``, ``typ``, the size limit), and it
costs several times the signature check on HS256. The rules are the same as PyJWT's where both
have one: the algorithm comes from the allow-list, never from the token (``alg`` must be in it);
an ``aud`` claim is rejected when no audience is configured (RFC 7519 4.1.3).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from onex_compose.capabilities._context import Principal
from onex_compose.capabilities.authentication._model import (
    AuthenticationConfig,
    AuthenticationError,
)
from onex_compose.exceptions import ConfigurationError

__all__ = ["JwksSource", "JwtVerifier", "KeyRing", "check_algorithms", "family_of"]

MAX_TOKEN_BYTES = 8192
_TYP_OK = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})
_FAMILIES = {"HS": "hmac", "RS": "rsa", "PS": "rsa", "ES": "ec", "Ed": "okp"}
_INSTALL = "pip install 'onex-compose[auth]'"


def family_of(alg: str) -> str:
    """The key family an algorithm needs: ``hmac``, ``rsa``, ``ec`` or ``okp``."""
    return _FAMILIES.get(alg[:2], "unknown")


def _pyjwt_algorithms() -> dict[str, Any]:
    try:
        from jwt.algorithms import get_default_algorithms
    except ImportError as exc:  # pragma: no cover - the [auth] extra is installed in tests
        raise ConfigurationError(
            "authentication needs PyJWT with its crypto backend, which is not installed. "
            f"Install it with: {_INSTALL}", capability="authentication") from exc
    return dict(get_default_algorithms())


def check_algorithms(algorithms: list[str]) -> list[str]:
    """Problems with an allow-list (empty when it is fine); each names what to change."""
    problems: list[str] = []
    if not algorithms:
        return ["jwt_algorithms: the allow-list is empty; list the algorithms your issuer "
                "signs with, e.g. ['RS256']"]
    known = _pyjwt_algorithms()
    known.pop("none", None)
    for alg in algorithms:
        if alg.lower() == "none":
            problems.append("jwt_algorithms: 'none' is forbidden (unsigned tokens would be "
                            "accepted); remove it")
        elif alg not in known:
            problems.append(f"jwt_algorithms: unknown algorithm {alg!r}; PyJWT knows "
                            f"{', '.join(sorted(known))}")
    families = {family_of(a) for a in algorithms if a in known}
    if "hmac" in families and families - {"hmac"}:
        problems.append(
            "jwt_algorithms: HS* algorithms must not be mixed with RS/PS/ES/EdDSA "
            f"({', '.join(algorithms)}): a public key could then be used as an HMAC secret "
            "(algorithm confusion). Use one kind per node")
    return problems


def _b64(segment: str) -> bytes:
    """Strict base64url without padding (as JWS requires)."""
    if "=" in segment:
        raise ValueError("padded")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _fail(reason: str, message: str) -> AuthenticationError:
    return AuthenticationError(reason, message, scheme="jwt")


def _secs(value: float) -> str:
    return f"{value:.0f} s" if abs(value) >= 1 else f"{value:.3g} s"


class KeyRing:
    """Verification keys by ``kid``: static PEMs, a JWKS and the HMAC secret.

    Each key is kept with its family (``rsa``, ``ec``, ``okp``, ``hmac``), so a key can only
    verify the algorithms of its kind, and (for EC) its curve.
    """

    __slots__ = ("hmac", "static")

    def __init__(self) -> None:
        self.static: dict[str, tuple[Any, str, str | None]] = {}
        self.hmac: bytes | None = None

    @staticmethod
    def describe(key: Any) -> tuple[str, str | None]:
        """``(family, curve)`` of a ``cryptography`` public key object."""
        from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

        if isinstance(key, rsa.RSAPublicKey):
            return "rsa", None
        if isinstance(key, ec.EllipticCurvePublicKey):
            return "ec", key.curve.name
        if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            return "okp", None
        return "unknown", None

    def load_pems(self, pems: Mapping[str, str]) -> list[str]:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        problems = []
        for kid, pem in pems.items():
            try:
                key = load_pem_public_key(pem.encode())
            except (ValueError, TypeError):
                problems.append(f"jwt_public_keys[{kid!r}]: not a PEM public key (the "
                                "value is not shown)")
                continue
            family, curve = self.describe(key)
            self.static[kid] = (key, family, curve)
        return problems


_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1",
           "ES521": "secp521r1", "ES256K": "secp256k1"}


def _fits(alg: str, family: str, curve: str | None) -> bool:
    if family != family_of(alg):
        return False
    want = _CURVES.get(alg)
    return want is None or curve is None or curve == want


class JwksSource:
    """A JWKS fetched over HTTP (httpx) or read from a file, cached for ``jwks_cache_ttl``.

    Refreshes are rate-limited by ``jwks_min_refresh_interval``; concurrent refreshes on one
    event loop share one fetch. A failed refresh keeps the keys of the last good one until
    their TTL runs out. ``clock`` is a wall clock (epoch seconds), injectable for tests.
    """

    def __init__(self, config: AuthenticationConfig, *, clock: Callable[[], float],
                 transport: Any = None, metrics: Any = None,
                 on_keys_removed: Callable[[], None] | None = None) -> None:
        self.config = config
        self.url = config.jwks_url
        self.file = config.jwks_file
        self.clock = clock
        self.transport = transport
        self.keys: dict[str, tuple[Any, str, str | None]] = {}
        self.fetched_at: float | None = None
        self.last_attempt: float | None = None
        self.last_error: str | None = None
        self.fetches = 0
        self._metrics = metrics
        self._on_keys_removed = on_keys_removed
        self._locks: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()
        self._thread_lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self.url is not None or self.file is not None

    def fresh(self) -> bool:
        """Keys from a successful refresh that is younger than ``jwks_cache_ttl``."""
        return (self.fetched_at is not None
                and self.clock() - self.fetched_at < self.config.jwks_cache_ttl)

    def usable(self) -> dict[str, tuple[Any, str, str | None]]:
        """The keys, or nothing once their TTL has run out."""
        return self.keys if self.fresh() else {}

    def may_refresh(self) -> bool:
        last = self.last_attempt
        return last is None or self.clock() - last >= self.config.jwks_min_refresh_interval

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.increment("auth_jwks_refresh_total", labels={"outcome": outcome})

    def _install(self, data: Any) -> int:
        from jwt import PyJWK

        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("the JWKS is not a JSON object with a 'keys' list")
        keys: dict[str, tuple[Any, str, str | None]] = {}
        for jwk in data["keys"]:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            if jwk.get("kty") == "oct":
                continue  # symmetric keys never come from a JWKS here
            try:
                parsed = PyJWK(jwk)
            except Exception:
                continue
            family, curve = KeyRing.describe(parsed.key)
            keys[str(jwk.get("kid", ""))] = (parsed.key, family, curve)
        if not keys:
            raise ValueError("the JWKS holds no usable signing key")
        removed = set(self.keys) - set(keys)
        self.keys = keys
        self.fetched_at = self.clock()
        self.last_error = None
        if removed and self._on_keys_removed is not None:
            self._on_keys_removed()
        return len(keys)

    def _fail(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self._count("error")
        from onex_compose.capabilities._log import logger

        logger.warning("authentication: JWKS refresh failed ({}); keeping {} cached key(s)",
                       self.last_error, len(self.usable()))

    def _read_file(self) -> Any:
        assert self.file is not None
        with open(self.file, encoding="utf-8") as fh:
            return json.load(fh)

    async def refresh(self) -> int:
        """Fetch the JWKS now (shared by concurrent callers on this loop); keys installed."""
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        started = self.fetches
        async with lock:
            if self.fetches != started and self.last_error is None:
                return len(self.keys)  # another caller fetched while this one waited
            self.last_attempt = self.clock()
            self.fetches += 1
            try:
                if self.url is not None:
                    import httpx

                    async with httpx.AsyncClient(timeout=self.config.jwks_timeout,
                                                 transport=self.transport) as client:
                        response = await client.get(self.url)
                        response.raise_for_status()
                        data = response.json()
                else:
                    data = await asyncio.to_thread(self._read_file)
                count = self._install(data)
            except Exception as exc:
                self._fail(exc)
                return 0
            self._count("ok")
            return count

    def refresh_sync(self) -> int:
        """:meth:`refresh` for the sync path (``httpx.Client``)."""
        with self._thread_lock:
            self.last_attempt = self.clock()
            self.fetches += 1
            try:
                if self.url is not None:
                    import httpx

                    transport = self.transport if isinstance(
                        self.transport, httpx.BaseTransport) else None
                    with httpx.Client(timeout=self.config.jwks_timeout,
                                      transport=transport) as client:
                        response = client.get(self.url)
                        response.raise_for_status()
                        data = response.json()
                else:
                    data = self._read_file()
                count = self._install(data)
            except Exception as exc:
                self._fail(exc)
                return 0
            self._count("ok")
            return count


class JwtVerifier:
    """Verifies JWTs against the config's rules and builds their :class:`Principal`.

    The verification cache maps the SHA-256 of a token to its principal until
    ``min(exp + leeway, now + verify_cache_ttl)``; it is bounded by ``verify_cache_size``
    (oldest entry evicted first).
    """

    def __init__(self, config: AuthenticationConfig, ring: KeyRing, jwks: JwksSource,
                 *, clock: Callable[[], float], metrics: Any = None) -> None:
        self.config = config
        self.ring = ring
        self.jwks = jwks
        self.clock = clock
        algs = _pyjwt_algorithms()
        self.allowed: dict[str, Any] = {a: algs[a] for a in config.jwt_algorithms if a in algs}
        self.allowed_text = ", ".join(config.jwt_algorithms)
        self.hmac_key = ring.hmac
        self.cache: dict[bytes, tuple[Principal, float]] = {}
        self.cache_size = config.verify_cache_size
        self.cache_ttl = config.verify_cache_ttl
        self.leeway = config.jwt_leeway
        self.max_age = config.jwt_max_age
        self.required = tuple(config.jwt_required_claims)
        self.issuer = config.jwt_issuer
        aud = config.jwt_audience
        self.audience = None if aud is None else frozenset([aud] if isinstance(aud, str) else aud)
        self.roles_path = tuple(config.roles_claim.split("."))
        self.scopes_path = tuple(config.scopes_claim.split("."))
        self.tenant_path = (None if config.tenant_claim is None
                            else tuple(config.tenant_claim.split(".")))
        if metrics is not None:
            self._hit = metrics.bind_counter("auth_verify_cache_total", {"result": "hit"})
            self._miss = metrics.bind_counter("auth_verify_cache_total", {"result": "miss"})
        else:
            self._hit = self._miss = _no_count

    def clear_cache(self) -> None:
        self.cache.clear()

    # -- the fast path -----------------------------------------------------------------------

    def cached(self, token: str) -> tuple[bytes, Principal | None]:
        """``(digest, principal)`` from the verification cache (``None`` on a miss)."""
        digest = hashlib.sha256(token.encode()).digest()
        entry = self.cache.get(digest)
        if entry is not None:
            if self.clock() < entry[1]:
                self._hit()
                return digest, entry[0]
            self.cache.pop(digest, None)
        self._miss()
        return digest, None

    def remember(self, digest: bytes, who: Principal, now: float, exp: float | None) -> None:
        if self.cache_size <= 0 or self.cache_ttl <= 0:
            return
        until = now + self.cache_ttl
        if exp is not None and exp + self.leeway < until:
            until = exp + self.leeway
        if self.max_age is not None:
            iat = who.claims.get("iat")
            if isinstance(iat, int | float) and iat + self.max_age + self.leeway < until:
                until = iat + self.max_age + self.leeway
        cache = self.cache
        if len(cache) >= self.cache_size:
            try:  # oldest first; sync guards in threads may race on the same entry
                del cache[next(iter(cache))]
            except (KeyError, RuntimeError, StopIteration):
                pass
        cache[digest] = (who, until)

    # -- parsing and checks ------------------------------------------------------------------

    def parse(self, token: str) -> tuple[dict[str, Any], str, str, bytes, str]:
        """``(header, alg, signing_input, signature, payload_segment)``; header checks done."""
        if len(token) > MAX_TOKEN_BYTES:
            raise _fail("malformed", f"token is {len(token)} bytes, over the "
                        f"{MAX_TOKEN_BYTES // 1024} KiB limit (not parsed)")
        parts = token.split(".")
        if len(parts) != 3:
            raise _fail("malformed", "not a JWT (expected three dot-separated segments)")
        head, body, sig = parts
        try:
            header = json.loads(_b64(head))
            signature = _b64(sig)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise _fail("malformed", "the JWT header or signature is not base64url JSON"
                        ) from None
        if not isinstance(header, dict):
            raise _fail("malformed", "the JWT header is not a JSON object")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.allowed:
            shown = alg if isinstance(alg, str) and len(alg) <= 20 else type(alg).__name__
            raise _fail("algorithm_not_allowed",
                        f"algorithm {shown!r} is not in the allow-list ({self.allowed_text})")
        if "crit" in header:
            raise _fail("malformed", "the JWT header has a 'crit' parameter; no critical "
                        "extension is supported")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _TYP_OK):
            raise _fail("malformed", "the JWT 'typ' header must be 'JWT' or 'at+jwt'")
        return header, alg, head + "." + body, signature, body

    def key_for(self, header: dict[str, Any], alg: str) -> Any | None:
        """The verification key, or ``None`` when the kid is not (yet) known."""
        if family_of(alg) == "hmac":
            return self.hmac_key
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _fail("malformed", "the JWT 'kid' header is not a string")
        if kid is None:
            candidates = [k for k in (*self.ring.static.values(), *self.jwks.usable().values())
                          if _fits(alg, k[1], k[2])]
            if len(candidates) == 1:
                return candidates[0][0]
            if not candidates:
                return None
            raise _fail("unknown_key", f"the token has no 'kid' and {len(candidates)} keys "
                        f"could verify {alg}; the issuer must name its key")
        entry = self.ring.static.get(kid)
        if entry is None:
            entry = self.jwks.usable().get(kid)
            if entry is None:
                return None
        if not _fits(alg, entry[1], entry[2]):
            raise _fail("unknown_key", f"key {kid[:64]!r} is an {entry[1]} key and cannot "
                        f"verify {alg}")
        return entry[0]

    def unknown_key(self, header: dict[str, Any]) -> AuthenticationError:
        kid = header.get("kid")
        if kid is None:
            return _fail("unknown_key", "the token has no 'kid' and no configured key fits "
                         "its algorithm")
        where = "jwt_public_keys" + (" or the JWKS" if self.jwks.configured else "")
        return _fail("unknown_key", f"no key with kid {str(kid)[:64]!r} in {where}")

    def finish(self, alg: str, key: Any, signing_input: str, signature: bytes, body: str,
               header: dict[str, Any]) -> tuple[Principal, float]:
        """Check the signature and the claims; ``(principal, now)``."""
        try:
            ok = self.allowed[alg].verify(signing_input.encode(), key, signature)
        except Exception:
            ok = False
        if not ok:
            raise _fail("bad_signature", f"the {alg} signature does not verify")
        try:
            claims = json.loads(_b64(body))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise _fail("malformed", "the JWT payload is not base64url JSON") from None
        if not isinstance(claims, dict):
            raise _fail("malformed", "the JWT payload is not a JSON object")
        now = self.clock()
        self.check_claims(claims, now)
        return self.principal(claims, header), now

    def check_claims(self, claims: dict[str, Any], now: float) -> None:
        for name in self.required:
            if name not in claims:
                raise _fail("missing_claim", f"required claim {name!r} is missing")
        leeway = self.leeway
        exp = claims.get("exp")
        if exp is not None:
            if not isinstance(exp, int | float) or isinstance(exp, bool):
                raise _fail("malformed", "claim 'exp' is not a number")
            if now > exp + leeway:
                raise _fail("expired", f"token expired {_secs(now - exp)} ago (leeway "
                            f"{_secs(leeway)})")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not isinstance(nbf, int | float) or isinstance(nbf, bool):
                raise _fail("malformed", "claim 'nbf' is not a number")
            if now + leeway < nbf:
                raise _fail("not_yet_valid", f"token not valid for another "
                            f"{_secs(nbf - now)} (nbf; leeway {_secs(leeway)})")
        iat = claims.get("iat")
        if iat is not None:
            if not isinstance(iat, int | float) or isinstance(iat, bool):
                raise _fail("malformed", "claim 'iat' is not a number")
            if iat > now + leeway:
                raise _fail("not_yet_valid", f"token issued {_secs(iat - now)} in the future "
                            f"(iat; leeway {_secs(leeway)})")
        if self.max_age is not None:
            if iat is None:
                raise _fail("missing_claim", "claim 'iat' is required by jwt_max_age")
            if now - iat > self.max_age + leeway:
                raise _fail("too_old", f"token issued {_secs(now - iat)} ago, over jwt_max_age "
                            f"{_secs(self.max_age)} (leeway {_secs(leeway)})")
        if self.issuer is not None:
            iss = claims.get("iss")
            if iss is None:
                raise _fail("missing_claim", "claim 'iss' is required (jwt_issuer is set)")
            if iss != self.issuer:
                shown = iss[:100] if isinstance(iss, str) else type(iss).__name__
                raise _fail("wrong_issuer", f"issuer {shown!r} is not {self.issuer!r}")
        aud = claims.get("aud")
        if self.audience is not None:
            if aud is None:
                raise _fail("missing_claim", "claim 'aud' is required (jwt_audience is set)")
            given = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
            if given is None or not any(isinstance(a, str) and a in self.audience
                                        for a in given):
                raise _fail("wrong_audience", "the token's audience does not include "
                            f"{', '.join(sorted(self.audience))}")
        elif aud is not None:
            raise _fail("wrong_audience", "the token names an audience but this node has no "
                        "jwt_audience configured; set jwt_audience to accept it")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _fail("missing_claim", "claim 'sub' (a non-empty string) is required")

    def principal(self, claims: dict[str, Any], header: dict[str, Any]) -> Principal:
        roles = _dig(claims, self.roles_path)
        scopes = _dig(claims, self.scopes_path)
        tenant = None if self.tenant_path is None else _dig(claims, self.tenant_path)
        exp = claims.get("exp")
        return Principal(
            claims["sub"], "jwt",
            roles=[roles] if isinstance(roles, str) else
            [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else (),
            scopes=scopes if isinstance(scopes, str) else
            [s for s in scopes if isinstance(s, str)] if isinstance(scopes, list) else (),
            tenant=None if tenant is None else str(tenant), claims=claims,
            expires_at=float(exp) if isinstance(exp, int | float) else None,
            key_id=header.get("kid"))

    # -- issuing -----------------------------------------------------------------------------


def _dig(claims: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _no_count(value: float = 1) -> None:
    return None


def thumbprint(public_key: Any) -> str:
    """The RFC 7638 JWK thumbprint of a public key (base64url SHA-256), used as its ``kid``."""
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    family, _ = KeyRing.describe(public_key)
    to_jwk = {"rsa": RSAAlgorithm, "ec": ECAlgorithm, "okp": OKPAlgorithm}[family].to_jwk
    jwk = json.loads(to_jwk(public_key))
    members = {"rsa": ("e", "kty", "n"), "ec": ("crv", "kty", "x", "y"),
               "okp": ("crv", "kty", "x")}[family]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).decode().rstrip(
        "=")


def env_secret(value: Any, env: str, environ: Mapping[str, str] | None) -> str | None:
    """A SecretStr's value, or the environment variable ``env`` when it is unset."""
    if value is not None:
        return str(value.get_secret_value())
    source = os.environ if environ is None else environ
    found = source.get(env)
    return found or None


def now_epoch() -> float:
    return time.time()
