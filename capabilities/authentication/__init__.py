"""authentication: who is calling? JWTs and API keys, verified once per ``process()`` call.

``self.authenticator`` (an :class:`Authenticator`) verifies the credentials a caller presents
and turns them into a :class:`~onex_compose.capabilities._context.Principal`; its guard (rank
22, outside audit_log, authorization and caching) does so for every ``process()`` call and sets
``_context.principal`` for the duration of the call, so authorization, audit_log, secure_storage
and the logging patcher (the ``actor`` extra) see who is calling.

* **Presenting credentials.** ``with node.credentials(bearer=tok):`` (or ``api_key=...``, or
  ``authorization="Bearer ..."`` from an HTTP header) sets ``_context.credentials`` for the calls
  inside the block (``async with`` works too); transports do the same from their headers.
  ``node.current_principal()`` reads the verified principal inside a call. Trusted in-process
  jobs run ``with node.authenticator.as_principal(Principal.system()):`` instead.
* **JWT** (``schemes: [jwt]``). The algorithm comes from the allow-list ``jwt_algorithms``,
  never from the token: ``alg: none`` and any algorithm outside the list are
  ``algorithm_not_allowed``, and a list mixing HS* with RS/PS/ES/EdDSA is refused at setup
  (an RSA public key used as an HMAC secret is the classic algorithm confusion). ``kid`` picks
  the key from ``jwt_public_keys`` or the JWKS (``jwks_url`` fetched with httpx, or
  ``jwks_file``); an unknown ``kid`` triggers one JWKS refresh, rate-limited by
  ``jwks_min_refresh_interval``, then ``unknown_key``. ``exp``/``nbf``/``iat`` are checked with
  ``jwt_leeway``, ``iat`` also against ``jwt_max_age``; ``iss``/``aud`` when configured; a
  ``typ`` other than ``JWT``/``at+jwt``, a ``crit`` header or a token over 8 KiB is
  ``malformed``. Successful verifications are cached by the token's SHA-256 until
  ``min(exp, now + verify_cache_ttl)``.
* **API keys** (``schemes: [api_key]``). ``onex_<key_id>_<secret>``, stored as
  HMAC-SHA256(pepper, secret), looked up by id, compared with ``hmac.compare_digest``; in the
  config (``api_keys``) or in the ``<namespace>_api_keys`` table (``api_key_store: database``,
  where :meth:`Authenticator.create_api_key` and :meth:`Authenticator.revoke_api_key` work).
  Never cached: a revocation takes effect at once, in every process.
* **Errors.** :class:`AuthenticationError` (a ``PermissionError``) with ``.reason``,
  ``.scheme`` and ``.www_authenticate``; its message says what was wrong and never contains
  the token or key. Configuration problems are one :class:`ConfigurationError` at setup that
  lists all of them.
* **Audit.** With ``audit_log`` composed (it sits inside this guard), rejections are recorded
  by authentication itself: action ``authenticate``, outcome ``denied``, the reason.
* **Secrets** (``jwt_secret``, ``api_key_pepper``, ``issuer_private_key``) are ``SecretStr``
  and may come from ``ONEX_JWT_SECRET`` / ``ONEX_API_KEY_PEPPER`` instead, which keeps them out
  of pickles (a node pickles by its configuration).

Layout: ``_model.py`` (config, errors, protocol), ``_jwt.py`` (verification, key ring, JWKS),
``_apikeys.py`` (hashing and the two key stores), this module (the facility and the mixin), the
contract ``mixin_authentication.yaml`` beside them.

Example:
    >>> import asyncio
    >>> from onex_compose import NodeCompute, compose
    >>> class Echo(NodeCompute):
    ...     async def process(self, data):
    ...         return f"{self.current_principal().subject} sent {data}"
    >>> Node = compose(Echo, ["authentication"])
    >>> node = Node(capability_config={"authentication": {
    ...     "jwt_algorithms": ["HS256"], "jwt_secret": "0123456789abcdef0123456789abcdef"}})
    >>> token = node.authenticator.issue_token("alice", roles=["writer"])
    >>> async def call():
    ...     with node.credentials(bearer=token):
    ...         return await node.process("hello")
    >>> asyncio.run(call())
    'alice sent hello'
    >>> try:
    ...     asyncio.run(node.process("hello"))
    ... except AuthenticationError as err:
    ...     print(err.reason, "|", err.www_authenticate)
    missing | Bearer realm="onex"
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.util
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar, cast

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities import _context
from onex_compose.capabilities._context import (
    Credentials,
    CredentialsScope,
    Principal,
    PrincipalScope,
)
from onex_compose.capabilities.authentication._apikeys import (
    ApiKeyHasher,
    ConfigKeyStore,
    DatabaseKeyStore,
    new_api_key,
)
from onex_compose.capabilities.authentication._jwt import (
    JwksSource,
    JwtVerifier,
    KeyRing,
    check_algorithms,
    env_secret,
    family_of,
    thumbprint,
)
from onex_compose.capabilities.authentication._model import (
    REASONS,
    ApiKeyCreated,
    ApiKeyEntry,
    AuthenticationConfig,
    AuthenticationError,
    AuthenticationProtocol,
)
from onex_compose.exceptions import ConfigurationError

__all__ = [
    "REASONS",
    "ApiKeyCreated",
    "ApiKeyEntry",
    "AuthenticationConfig",
    "AuthenticationError",
    "AuthenticationProtocol",
    "Authenticator",
    "Credentials",
    "MixinAuthentication",
    "Principal",
]

T = TypeVar("T")

_INSTALL = "pip install 'onex-compose[auth]'"
_HEADER = {"bearer": "bearer", "apikey": "api_key", "api-key": "api_key", "api_key": "api_key"}
_CHALLENGE = {"jwt": "Bearer", "api_key": "ApiKey"}
_sha256 = hashlib.sha256
_SAFE_SCHEME = frozenset({"bearer", "api_key", "basic", "digest", "trusted", "none"})


def _require_packages(config: AuthenticationConfig) -> None:
    missing = [name for name in ("jwt", "cryptography")
               if importlib.util.find_spec(name) is None]
    if config.jwks_url is not None and importlib.util.find_spec("httpx") is None:
        missing.append("httpx")
    if missing:
        raise ConfigurationError(
            f"authentication needs {', '.join(missing)}, which is not installed. Install it "
            f"with: {_INSTALL}", capability="authentication")


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code (in a helper thread inside a loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, asyncio.run(coro)))
        except BaseException as exc:
            box.append((False, exc))

    thread = threading.Thread(target=target, name="onex-auth-sync")
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return cast(T, value)


class Authenticator:
    """Verifies credentials into principals (the ``authenticator`` facility).

    Args:
        config: the ``authentication`` config.
        metrics: the node's metrics facility, or ``None``.
        clock: a wall clock in epoch seconds (``exp``, ``nbf``, ``iat``, the caches and the
            JWKS refresh interval use it); injectable for tests.
        environ: where ``ONEX_JWT_SECRET`` / ``ONEX_API_KEY_PEPPER`` are read (default
            ``os.environ``).
        jwks_transport: an ``httpx`` transport for the JWKS client (tests pass an
            ``httpx.MockTransport``).
        database: the node's ``database`` facility (``api_key_store: database``).
        audit: a zero-argument callable returning the node's audit facility, or ``None``.

    Raises:
        ConfigurationError: one error listing every problem: a bad algorithm list, a missing
            key for the chosen algorithms, an HS algorithm together with a PEM, a missing
            pepper, a database store without the database capability, a missing package.

    Example:
        >>> auth = Authenticator(AuthenticationConfig(
        ...     jwt_algorithms=["HS256"], jwt_secret="0123456789abcdef0123456789abcdef"))
        >>> import asyncio
        >>> asyncio.run(auth.authenticate("Bearer " + auth.issue_token("bob"))).subject
        'bob'
        >>> auth
        <Authenticator schemes=['jwt'] algorithms=['HS256'] keys=hmac required=True>
    """

    def __init__(self, config: AuthenticationConfig, *, metrics: Any = None,
                 clock: Callable[[], float] | None = None,
                 environ: Mapping[str, str] | None = None, jwks_transport: Any = None,
                 database: Any = None, audit: Callable[[], Any] | None = None) -> None:
        _require_packages(config)
        self.config = config
        self.metrics = metrics
        self.clock = clock or time.time
        self.required = config.required
        self.schemes = tuple(config.schemes)
        self._audit = audit
        self._counters: dict[tuple[str, str], Callable[..., None]] = {}
        problems = check_algorithms(config.jwt_algorithms)
        jwt_on = "jwt" in self.schemes
        ring = self._ring = KeyRing()  # set first: the repr reads it, even after a failure
        self._issuer_key: Any = None
        self._issuer_kid: str | None = None
        families = {family_of(a) for a in config.jwt_algorithms}
        secret = env_secret(config.jwt_secret, "ONEX_JWT_SECRET", environ)
        if "hmac" in families:
            pems = [name for name, on in (
                ("jwt_public_keys", bool(config.jwt_public_keys)),
                ("jwks_url", config.jwks_url is not None),
                ("jwks_file", config.jwks_file is not None),
                ("issuer_private_key", config.issuer_private_key is not None)) if on]
            if pems:
                problems.append(
                    f"{', '.join(pems)}: public/private keys cannot be used with HS* "
                    "algorithms (an HMAC secret must never be a PEM: algorithm confusion); use "
                    "jwt_secret with HS*, or RS/ES/PS/EdDSA algorithms with keys")
            if secret is None:
                if jwt_on:
                    problems.append("jwt_secret: HS* algorithms need a shared secret: set "
                                    "jwt_secret or the ONEX_JWT_SECRET environment variable "
                                    "(at least 32 random bytes)")
            elif len(secret.encode()) < 32:
                problems.append("jwt_secret: must be at least 32 bytes for HS* (RFC 7518 "
                                "3.2); the value is not shown")
            elif secret.lstrip().startswith("-----BEGIN"):
                problems.append("jwt_secret: looks like a PEM key; an HMAC secret must never "
                                "be a public key (algorithm confusion)")
            else:
                ring.hmac = secret.encode()
        else:
            if config.jwt_secret is not None:
                problems.append("jwt_secret: only HS* algorithms use a shared secret; remove it "
                                f"or allow HS256 instead of {', '.join(config.jwt_algorithms)}")
            problems.extend(ring.load_pems(config.jwt_public_keys))
            if config.issuer_private_key is not None:
                problems.extend(self._load_issuer_key(config, ring))
        self._jwks = JwksSource(config, clock=self.clock, transport=jwks_transport,
                                metrics=metrics, on_keys_removed=self._keys_removed)
        if config.jwks_file is not None and "hmac" not in families:
            try:
                self._jwks._install(self._jwks._read_file())
            except (OSError, ValueError) as exc:
                problems.append(f"jwks_file: cannot load {config.jwks_file!r} "
                                f"({type(exc).__name__}: {str(exc)[:200]})")
        if jwt_on and "hmac" not in families and not (
                ring.static or self._jwks.configured):
            problems.append("no JWT verification key: set jwt_public_keys ({kid: PEM}), "
                            "jwks_url or jwks_file (or issuer_private_key to verify the tokens "
                            "this node issues)")
        pepper = env_secret(config.api_key_pepper, "ONEX_API_KEY_PEPPER", environ)
        self._hasher = None if pepper is None else ApiKeyHasher(pepper, config.api_key_prefix)
        if "api_key" in self.schemes and pepper is None:
            problems.append("api_key_pepper: the api_key scheme needs a pepper (the HMAC key of "
                            "the stored hashes): set api_key_pepper or ONEX_API_KEY_PEPPER")
        if config.api_key_store == "database" and database is None:
            problems.append("api_key_store: 'database' needs the database capability; compose "
                            "it (compose(Node, ['authentication', 'database'])) or use 'config'")
        if problems:
            raise ConfigurationError("authentication: invalid configuration",
                                     capability="authentication", problems=problems)
        self._verifier = JwtVerifier(config, ring, self._jwks, clock=self.clock, metrics=metrics)
        self._store: ConfigKeyStore | DatabaseKeyStore | None = None
        if self._hasher is not None:
            self._store = (DatabaseKeyStore(database, self._hasher)
                           if config.api_key_store == "database"
                           else ConfigKeyStore(config.api_keys, self._hasher))
        self._jwt_on = jwt_on
        self._api_on = "api_key" in self.schemes
        self._prefix = config.api_key_prefix
        # a bearer value with this prefix is an API key (None: never)
        self._bearer_key_prefix = (config.api_key_prefix
                                   if self._api_on and config.api_key_prefix else None)
        self._config_store = self._store if type(self._store) is ConfigKeyStore else None
        self._ok_jwt = self._counter("jwt", "ok")
        self._ok_api = self._counter("api_key", "ok")

    # -- setup helpers -----------------------------------------------------------------------

    def _load_issuer_key(self, config: AuthenticationConfig, ring: KeyRing) -> list[str]:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        assert config.issuer_private_key is not None
        try:
            key = load_pem_private_key(config.issuer_private_key.get_secret_value().encode(),
                                       password=None)
        except (ValueError, TypeError):
            return ["issuer_private_key: not an unencrypted PEM private key (the value is not "
                    "shown)"]
        public = key.public_key()
        family, curve = KeyRing.describe(public)
        fitting = [a for a in config.jwt_algorithms if family_of(a) == family]
        if not fitting:
            return [f"issuer_private_key: an {family} key cannot sign any of "
                    f"{', '.join(config.jwt_algorithms)}"]
        kid = thumbprint(public)
        self._issuer_key = key
        self._issuer_kid = kid
        self._issuer_alg = fitting[0]
        ring.static.setdefault(kid, (public, family, curve))
        return []

    def _keys_removed(self) -> None:
        self._verifier.clear_cache()

    def _counter(self, scheme: str, outcome: str) -> Callable[..., None]:
        counter = self._counters.get((scheme, outcome))
        if counter is None:
            if self.metrics is None:
                counter = _no_count
            else:
                counter = self.metrics.bind_counter(
                    "auth_attempts_total", {"scheme": scheme, "outcome": outcome})
            self._counters[(scheme, outcome)] = counter
        return counter

    def __repr__(self) -> str:
        keys: list[str] = []
        if self._ring.hmac is not None:
            keys.append("hmac")
        if self._ring.static:
            keys.append(f"{len(self._ring.static)} static")
        jwks = getattr(self, "_jwks", None)
        if jwks is not None and jwks.configured:
            keys.append(f"jwks({len(jwks.keys)})")
        return (f"<Authenticator schemes={list(self.schemes)} "
                f"algorithms={list(self.config.jwt_algorithms)} keys={'+'.join(keys) or 'none'} "
                f"required={self.required}>")

    def __reduce__(self) -> Any:
        raise TypeError("an Authenticator does not pickle (it holds key material); pickle the "
                        "node, which rebuilds it from its configuration")

    # -- verifying ---------------------------------------------------------------------------

    def _missing(self) -> AuthenticationError:
        accepted = " or ".join("a bearer JWT" if s == "jwt" else "an API key"
                               for s in self.schemes)
        return AuthenticationError(
            "missing", f"no credentials presented; this node accepts {accepted} (use "
            "node.credentials(bearer=...) or an Authorization header)",
            scheme=self.schemes[0], challenges=tuple(_CHALLENGE[s] for s in self.schemes))

    def _route(self, credentials: Credentials | str | None) -> tuple[str, str]:
        """``(kind, value)`` with kind ``jwt`` or ``api_key``; raises for what is refused."""
        if credentials is None:
            raise self._missing()
        if isinstance(credentials, str):
            scheme, _, value = credentials.strip().partition(" ")
            scheme = _HEADER.get(scheme.lower(), scheme.lower())
            value = value.strip()
            if not value:
                raise AuthenticationError("malformed", "expected '<scheme> <value>', such as "
                                          "'Bearer <token>' or 'ApiKey <key>'",
                                          scheme=self.schemes[0])
        else:
            scheme, value = credentials.scheme, credentials.value
        if scheme == "bearer":
            prefix = self._bearer_key_prefix
            if prefix is not None and value.startswith(prefix):
                return "api_key", value
            if self._jwt_on:
                return "jwt", value
            raise AuthenticationError("malformed", "bearer JWTs are not accepted by this node "
                                      "(schemes: api_key); present an API key", scheme="jwt")
        if scheme == "api_key":
            if self._api_on:
                return "api_key", value
            raise AuthenticationError("malformed", "API keys are not accepted by this node "
                                      "(schemes: jwt); present a bearer JWT", scheme="api_key")
        shown = scheme if scheme in _SAFE_SCHEME or (scheme.isalpha() and len(scheme) <= 20) \
            else "?"
        raise AuthenticationError("malformed", f"credentials scheme {shown!r} is not accepted "
                                  f"(schemes: {', '.join(self.schemes)})",
                                  scheme=self.schemes[0])

    def _fast(self, credentials: Credentials) -> Principal | bytes | None:
        """The guard's synchronous fast path: a verify-cache hit, or a config-store API key.

        Anything else goes to :meth:`_authenticate` with what this returned: the token's
        digest after a verify-cache miss (so it is not hashed twice), else ``None``.
        """
        scheme = credentials.scheme
        value = credentials.value
        prefix = self._bearer_key_prefix
        if scheme == "bearer" and self._jwt_on and (prefix is None
                                                    or not value.startswith(prefix)):
            verifier = self._verifier
            digest = _sha256(value.encode()).digest()
            entry = verifier.cache.get(digest)
            if entry is not None and self.clock() < entry[1]:
                verifier._hit()
                self._ok_jwt()
                return entry[0]
            return digest
        store = self._config_store
        if store is not None and (scheme == "api_key" or scheme == "bearer"):
            try:
                who = store.verify(value)
            except AuthenticationError:
                return None  # counted and audited on the slow path
            self._ok_api()
            return who
        return None

    async def authenticate(self, credentials: Credentials | str | None) -> Principal:
        """Verify ``credentials`` (a :class:`Credentials`, or ``"Bearer <jwt>"`` /
        ``"ApiKey <key>"``) and return the principal.

        Raises:
            AuthenticationError: the credentials are missing or do not verify (the rejection
                is counted and, with audit_log composed, recorded).
        """
        return await self._authenticate(credentials, None)

    async def _authenticate(self, credentials: Credentials | str | None,
                            digest: bytes | None) -> Principal:
        """:meth:`authenticate`; ``digest``: the token's SHA-256 when the guard's fast path
        already missed the verify cache with it."""
        try:
            kind, value = self._route(credentials)
            if kind == "jwt":
                if digest is None:
                    digest, who = self._verifier.cached(value)
                    if who is not None:
                        self._ok_jwt()
                        return who
                else:
                    self._verifier._miss()
                who = self._verify_jwt_now(value, digest, refresh=False)
                if who is None:  # an unknown kid and a JWKS refresh is allowed
                    await self._jwks.refresh()
                    who = self._verify_jwt_now(value, digest, refresh=True)
                return who  # type: ignore[return-value]
            return await self._verify_api_key(value)
        except AuthenticationError as exc:
            self._counter(exc.scheme, exc.reason)()
            await self._audit_rejection(exc)
            raise

    def _verify_jwt_now(self, token: str, digest: bytes, *, refresh: bool) -> Principal | None:
        """Verify a JWT; ``None`` when its kid is unknown and a JWKS refresh may find it
        (``refresh``: the refresh just ran, so an unknown kid is final)."""
        verifier = self._verifier
        header, alg, signing_input, signature, body = verifier.parse(token)
        key = verifier.key_for(header, alg)
        if key is None:
            jwks = self._jwks
            if not refresh and jwks.configured and jwks.may_refresh():
                return None
            raise verifier.unknown_key(header)
        who, now = verifier.finish(alg, key, signing_input, signature, body, header)
        verifier.remember(digest, who, now, who.expires_at)
        self._ok_jwt()
        return who

    async def _verify_api_key(self, key: str) -> Principal:
        store = self._store
        assert store is not None
        if type(store) is ConfigKeyStore:
            who = store.verify(key)
        else:
            who = await cast(DatabaseKeyStore, store).verify(key)
        self._ok_api()
        return who

    def authenticate_sync(self, credentials: Credentials | str | None) -> Principal:
        """:meth:`authenticate` for sync code (the guard of a plain ``def process``).

        A JWKS refresh uses httpx's sync client; a database key lookup and the audit record
        run on a private event loop.
        """
        try:
            kind, value = self._route(credentials)
            if kind == "jwt":
                verifier = self._verifier
                digest, who = verifier.cached(value)
                if who is not None:
                    self._ok_jwt()
                    return who
                header, alg, signing_input, signature, body = verifier.parse(value)
                key = verifier.key_for(header, alg)
                if key is None:
                    jwks = self._jwks
                    if jwks.configured and jwks.may_refresh():
                        jwks.refresh_sync()
                        key = verifier.key_for(header, alg)
                    if key is None:
                        raise verifier.unknown_key(header)
                who, now = verifier.finish(alg, key, signing_input, signature, body, header)
                verifier.remember(digest, who, now, who.expires_at)
                self._ok_jwt()
                return who
            if type(self._store) is ConfigKeyStore:
                who = self._store.verify(value)
                self._ok_api()
                return who
            return _run_sync(self._verify_api_key(value))
        except AuthenticationError as exc:
            self._counter(exc.scheme, exc.reason)()
            if self._audit is not None:
                self._audit_rejection_sync(exc)
            raise

    async def _audit_rejection(self, exc: AuthenticationError) -> None:
        if self._audit is None:
            return
        try:
            await self._audit().record("authenticate", outcome="denied", reason=exc.reason,
                                       details={"scheme": exc.scheme, "message": exc.detail})
        except Exception as audit_exc:
            from onex_compose.capabilities._log import logger

            logger.warning("authentication: could not audit a rejection ({}): {}",
                           exc.reason, type(audit_exc).__name__)

    def _audit_rejection_sync(self, exc: AuthenticationError) -> None:
        assert self._audit is not None
        try:
            audit = self._audit()
            record_sync = getattr(audit, "record_sync", None)
            if record_sync is None:
                _run_sync(self._audit_rejection(exc))
                return
            record_sync("authenticate", outcome="denied", reason=exc.reason,
                        details={"scheme": exc.scheme, "message": exc.detail})
        except Exception as audit_exc:  # the rejection stands either way
            from onex_compose.capabilities._log import logger

            logger.warning("authentication: could not audit a rejection ({}): {}",
                           exc.reason, type(audit_exc).__name__)

    def as_principal(self, who: Principal) -> PrincipalScope:
        """A ``with`` / ``async with`` block whose calls run as ``who`` (trusted in-process jobs:
        ``as_principal(Principal.system())``); the guard accepts it without credentials."""
        return PrincipalScope(who)

    # -- issuing -----------------------------------------------------------------------------

    def issue_token(self, subject: str, *, roles: Iterable[str] = (),
                    scopes: Iterable[str] | str = (), tenant: str | None = None,
                    ttl: float | None = None, claims: Mapping[str, Any] | None = None) -> str:
        """A signed JWT for ``subject`` that this node (and its peers) accept.

        Signs with ``issuer_private_key`` (its ``kid`` is the key's RFC 7638 thumbprint) or,
        for HS*, with ``jwt_secret``; sets ``iat``, ``exp`` (``ttl``, default ``issue_ttl``),
        ``jti``, and ``iss`` / ``aud`` when configured.

        Raises:
            ConfigurationError: no signing key is configured.
        """
        import jwt

        config = self.config
        now = self.clock()
        body: dict[str, Any] = dict(claims or {})
        body.update(sub=subject, iat=int(now), exp=int(now + (ttl or config.issue_ttl)),
                    jti=secrets.token_hex(12))
        if config.jwt_issuer is not None:
            body["iss"] = config.jwt_issuer
        if config.jwt_audience is not None:
            body["aud"] = config.jwt_audience
        roles = list(roles)
        if roles:
            body[config.roles_claim] = roles
        scope_list = scopes.split() if isinstance(scopes, str) else list(scopes)
        if scope_list:
            body[config.scopes_claim] = " ".join(scope_list)
        if tenant is not None and config.tenant_claim is not None:
            body[config.tenant_claim] = tenant
        if self._ring.hmac is not None:
            alg = next(a for a in config.jwt_algorithms if family_of(a) == "hmac")
            return jwt.encode(body, self._ring.hmac, algorithm=alg, headers={"typ": "JWT"})
        if self._issuer_key is None:
            raise ConfigurationError(
                "authentication: issue_token needs a signing key: issuer_private_key (a PEM "
                "private key for RS/PS/ES/EdDSA) or jwt_secret with an HS* algorithm",
                capability="authentication")
        return jwt.encode(body, self._issuer_key, algorithm=self._issuer_alg,
                          headers={"kid": self._issuer_kid, "typ": "JWT"})

    # -- API keys ----------------------------------------------------------------------------

    def _hasher_or_fail(self) -> ApiKeyHasher:
        if self._hasher is None:
            raise ConfigurationError(
                "authentication: API keys need api_key_pepper (or ONEX_API_KEY_PEPPER)",
                capability="authentication")
        return self._hasher

    def hash_api_key(self, key: str) -> str:
        """The hash to put under ``api_keys.<key_id>.hash`` for ``key`` (config store).

        Raises:
            ValueError: ``key`` does not look like ``<prefix><key_id>_<secret>``.
            ConfigurationError: no pepper is configured.
        """
        return self._hasher_or_fail().hash_key(key)

    def generate_api_key(self) -> ApiKeyCreated:
        """A fresh random key for a config entry (``hash_api_key(created.key)`` is its hash)."""
        return new_api_key(self._hasher_or_fail().prefix)

    async def create_api_key(self, subject: str, *, roles: Iterable[str] = (),
                             scopes: Iterable[str] = (), tenant: str | None = None
                             ) -> ApiKeyCreated:
        """Create and store a key (``api_key_store: database``); ``.key`` is shown only here.

        Raises:
            ConfigurationError: the store is ``config`` (the message says how to add a config
                entry with :meth:`hash_api_key`), or no pepper is configured.
        """
        self._hasher_or_fail()
        store = self._store
        if not isinstance(store, DatabaseKeyStore):
            raise cast(ConfigKeyStore, store).refuse("create_api_key")
        if not isinstance(subject, str) or not subject:
            raise ValueError("create_api_key needs a non-empty subject")
        return await store.create(subject, list(roles), list(scopes), tenant)

    async def revoke_api_key(self, key_id: str) -> None:
        """Revoke a key by id (``api_key_store: database``); effective at once everywhere.

        Raises:
            KeyError: no active key has this id.
            ConfigurationError: the store is ``config`` (remove the entry instead).
        """
        self._hasher_or_fail()
        store = self._store
        if not isinstance(store, DatabaseKeyStore):
            raise cast(ConfigKeyStore, store).refuse("revoke_api_key")
        if not await store.revoke(key_id):
            raise KeyError(f"no active API key with id {key_id!r}")

    # -- JWKS and health ---------------------------------------------------------------------

    async def refresh_jwks(self) -> int:
        """Fetch the JWKS now (not rate-limited); the number of keys installed (0 on failure,
        which keeps the cached keys and marks health degraded)."""
        if not self._jwks.configured:
            return 0
        return await self._jwks.refresh()

    @property
    def jwks_fetches(self) -> int:
        """How many JWKS fetches were attempted (URL or file)."""
        return self._jwks.fetches

    async def health(self) -> dict[str, Any]:
        """``healthy``: keys fresh; ``degraded``: the last JWKS refresh failed but cached (or
        static) keys are usable; ``unhealthy``: no usable key."""
        report: dict[str, Any] = {"schemes": list(self.schemes)}
        if not self._jwt_on:
            report["status"] = "healthy"
            return report
        if self._ring.hmac is not None:
            report.update(status="healthy", keys="hmac")
            return report
        jwks = self._jwks
        static = len(self._ring.static)
        report["static_keys"] = static
        if not jwks.configured:
            report["status"] = "healthy" if static else "unhealthy"
            return report
        if not jwks.fresh() and jwks.may_refresh():
            await jwks.refresh()
        usable = len(jwks.usable())
        report["jwks"] = {"keys": usable, "fetches": jwks.fetches,
                          "age_s": None if jwks.fetched_at is None
                          else round(self.clock() - jwks.fetched_at, 3),
                          "last_error": jwks.last_error}
        if usable and jwks.last_error is None:
            report["status"] = "healthy"
        elif usable or static:
            report["status"] = "degraded"
        else:
            report["status"] = "unhealthy"
        return report


def _no_count(value: float = 1) -> None:
    return None


# ------------------------------------------------------------------------------------------------
# the mixin


class MixinAuthentication:
    """Authentication and identity verification: ``self.authenticator`` and a ``process()``
    guard (rank 22) that verifies the call's credentials and sets its principal.

    Requires ``metrics``; uses ``health_check`` (the ``authentication`` check), ``audit_log``
    (rejections recorded), ``database`` (``api_key_store: database``) when composed.

    Example:
        >>> from onex_compose import NodeEffect, compose
        >>> Service = compose(NodeEffect, ["authentication"])  # doctest: +SKIP
        >>> node = Service(capability_config={"authentication": {
        ...     "jwks_url": "https://issuer.example/.well-known/jwks.json"}})  # doctest: +SKIP
        >>> with node.credentials(authorization=request.headers["Authorization"]):
        ...     await node.process(data)  # doctest: +SKIP
    """

    __onex_capability__ = "authentication"
    __slots__ = ()

    def setup_authentication(self, config: AuthenticationConfig | Mapping[str, Any] | None = None
                             ) -> None:
        """Build the authenticator; register the health check; wire audit_log and database."""
        cfg = coerce_config(AuthenticationConfig, config, "authentication")
        node = cast(Any, self)
        old = getattr(node, "authenticator", None)
        audit = (lambda: node.audit) if has_capability(self, "audit_log") else None
        database = node.db if has_capability(self, "database") else None
        auth = Authenticator(cfg, metrics=node.metrics,
                             clock=old.clock if isinstance(old, Authenticator) else None,
                             jwks_transport=old._jwks.transport
                             if isinstance(old, Authenticator) else None,
                             database=database, audit=audit)
        node.authenticator = auth
        if has_capability(self, "health_check"):
            async def check() -> dict[str, Any]:
                return await node.authenticator.health()

            node.register_health_check(check, name="authentication")

    async def start_authentication(self) -> None:
        """Fetch the JWKS once (a failure is logged and reported by health, not raised)."""
        auth = cast(Any, self).authenticator
        if auth._jwks.url is not None and not auth._jwks.fresh():
            await auth.refresh_jwks()

    @facility
    def authenticator(self) -> Authenticator:
        """The node's authenticator (default config when setup never ran)."""
        return Authenticator(AuthenticationConfig(), metrics=cast(Any, self).metrics)

    def credentials(self, *, bearer: str | None = None, api_key: str | None = None,
                    authorization: str | None = None) -> CredentialsScope:
        """Present credentials for the calls made inside a ``with`` / ``async with`` block.

        Exactly one of ``bearer`` (a JWT), ``api_key`` or ``authorization`` (an HTTP
        ``Authorization`` header value: ``"Bearer <jwt>"`` or ``"ApiKey <key>"``).

        Example:
            >>> with node.credentials(bearer=token):  # doctest: +SKIP
            ...     await node.process(data)
        """
        return CredentialsScope(bearer=bearer, api_key=api_key, authorization=authorization)

    def current_principal(self) -> Principal | None:
        """The principal of the call in progress (``None`` outside an authenticated call)."""
        return _context.principal.get()

    def _guard_authentication(self, call: Callable[..., Awaitable[T]]
                              ) -> Callable[..., Awaitable[T]]:
        """Wrap ``process()``: verify the call's credentials once, run it as their principal.

        Without credentials, a principal already set (``as_principal``, or an enclosing
        authenticated call of this process) is kept; otherwise the call is rejected
        (``missing``) unless ``required`` is false. The principal is reset when the call ends.
        """
        node = cast(Any, self)
        creds_var = _context.credentials
        principal_var = _context.principal

        @functools.wraps(call)
        async def guarded(*args: Any, **kwargs: Any) -> T:
            creds = creds_var.get()
            auth = node.authenticator
            if creds is None:
                if principal_var.get() is not None or not auth.required:
                    return await call(*args, **kwargs)
                who = await auth.authenticate(None)  # raises "missing"
            else:
                who = auth._fast(creds)
                if type(who) is not Principal:
                    who = await auth._authenticate(creds, who)
            token = principal_var.set(who)
            try:
                return await call(*args, **kwargs)
            finally:
                principal_var.reset(token)

        return guarded

    def _guard_sync_authentication(self, call: Callable[..., T]) -> Callable[..., T]:
        """The sync twin of :meth:`_guard_authentication` (``authenticate_sync``)."""
        node = cast(Any, self)
        creds_var = _context.credentials
        principal_var = _context.principal

        @functools.wraps(call)
        def guarded_sync(*args: Any, **kwargs: Any) -> T:
            creds = creds_var.get()
            auth = node.authenticator
            if creds is None:
                if principal_var.get() is not None or not auth.required:
                    return call(*args, **kwargs)
                who = auth.authenticate_sync(None)  # raises "missing"
            else:
                who = auth._fast(creds)
                if type(who) is not Principal:
                    who = auth.authenticate_sync(creds)
            token = principal_var.set(who)
            try:
                return call(*args, **kwargs)
            finally:
                principal_var.reset(token)

        return guarded_sync
