"""authentication: the config model, the errors, the API key records and the protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from onex_compose.capabilities._context import Credentials, Principal, PrincipalScope
from onex_compose.exceptions import OnexError

__all__ = [
    "REASONS",
    "ApiKeyCreated",
    "ApiKeyEntry",
    "AuthenticationConfig",
    "AuthenticationError",
    "AuthenticationProtocol",
]

REASONS = ("missing", "malformed", "bad_signature", "algorithm_not_allowed", "expired",
           "not_yet_valid", "too_old", "wrong_issuer", "wrong_audience", "missing_claim",
           "unknown_key", "revoked", "unknown_api_key")

class AuthenticationError(OnexError, PermissionError):
    """Credentials were missing or did not verify.

    Not retriable (the same credentials fail the same way) and neutral for a circuit breaker
    (a caller's bad token says nothing about a dependency).

    Attributes:
        reason: one of :data:`REASONS` (``missing``, ``malformed``, ``bad_signature``,
            ``algorithm_not_allowed``, ``expired``, ``not_yet_valid``, ``too_old``,
            ``wrong_issuer``, ``wrong_audience``, ``missing_claim``, ``unknown_key``,
            ``revoked``, ``unknown_api_key``).
        scheme: the scheme concerned: ``jwt``, ``api_key`` (or ``none`` when nothing was
            presented).
        www_authenticate: the ``WWW-Authenticate`` header value an HTTP transport returns.

    The message says what was wrong and never contains the token or key.

    Example:
        >>> err = AuthenticationError("expired", "token expired 42 s ago (leeway 30 s)",
        ...                           scheme="jwt")
        >>> err.reason, err.onex_retriable, err.onex_breaker_neutral
        ('expired', False, True)
        >>> err.www_authenticate
        'Bearer realm="onex", error="invalid_token", error_description="token expired 42 s ago (leeway 30 s)"'
    """

    onex_retriable = False
    onex_breaker_neutral = True

    def __init__(self, reason: str, message: str, *, scheme: str = "jwt",
                 challenges: tuple[str, ...] = ()) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown authentication failure reason {reason!r}; one of "
                             f"{', '.join(REASONS)}")
        self.reason = reason
        self.scheme = scheme
        self.challenges = challenges
        super().__init__(f"authentication failed ({reason}): {message}")
        self.detail = message

    @property
    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` value: one challenge per accepted scheme (RFC 6750 style)."""
        if self.reason == "missing":
            schemes = self.challenges or (("ApiKey",) if self.scheme == "api_key"
                                          else ("Bearer",))
            return ", ".join(f'{s} realm="onex"' for s in schemes)
        challenge = "ApiKey" if self.scheme == "api_key" else "Bearer"
        detail = self.detail.replace("\\", "\\\\").replace('"', "'")
        return f'{challenge} realm="onex", error="invalid_token", error_description="{detail}"'

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (self.reason, self.detail, self.scheme, self.challenges))


def _rebuild_error(reason: str, detail: str, scheme: str,
                   challenges: tuple[str, ...]) -> AuthenticationError:
    return AuthenticationError(reason, detail, scheme=scheme, challenges=challenges)


class ApiKeyEntry(BaseModel):
    """One statically configured API key: its HMAC hash (never the key) and who it is.

    ``hash`` is ``node.authenticator.hash_api_key(key)``: the hex HMAC-SHA256 of the key's
    secret part under ``api_key_pepper``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    hash: str = Field(pattern=r"^[0-9a-f]{64}$",
                      description="hex HMAC-SHA256(pepper, secret): hash_api_key(key)")
    subject: str = Field(min_length=1)
    roles: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list)
    tenant: str | None = None


_KNOWN_SCHEMES = ("jwt", "api_key")


class AuthenticationConfig(BaseModel):
    """The ``authentication`` subcontract (every key of ``authentication_config``).

    Attributes:
        required: ``process()`` without valid credentials raises
            ``AuthenticationError(reason="missing")``; ``False`` runs it with no principal.
        schemes: accepted schemes: ``jwt`` and/or ``api_key``.
        jwt_algorithms: the allow-list (never read from the token). Non-empty, no ``none``,
            HS* never mixed with RS/PS/ES/EdDSA.
        jwt_issuer / jwt_audience: when set, ``iss`` / ``aud`` are required and checked
            (``aud`` in the token may be a list; ``jwt_audience`` may list several).
        jwt_leeway: seconds of clock skew for ``exp`` / ``nbf`` / ``iat`` (0..300).
        jwt_required_claims: claims every token must carry.
        jwt_max_age: maximum seconds since ``iat`` (then ``iat`` is required).
        jwt_secret: HS* key (``SecretStr``); read from ``ONEX_JWT_SECRET`` when unset.
        jwt_public_keys: ``kid -> PEM`` public keys (RS/PS/ES/EdDSA).
        jwks_url / jwks_file: a JWKS source (fetched with httpx) or a local JWKS JSON file.
        jwks_cache_ttl / jwks_min_refresh_interval / jwks_timeout: seconds.
        roles_claim / scopes_claim / tenant_claim: where roles, scopes (a space-separated
            string or a list) and the tenant are read (dotted paths reach nested claims).
        verify_cache_size / verify_cache_ttl: successful JWT verifications are cached by the
            token's SHA-256 until ``min(exp, now + ttl)`` (``0`` size: no cache). API keys are
            never cached.
        api_key_prefix: keys look like ``<prefix><key_id>_<secret>``.
        api_key_pepper: the HMAC key for API key hashes (``SecretStr``; env
            ``ONEX_API_KEY_PEPPER``); required when ``api_key`` is a scheme.
        api_keys: static ``key_id -> {hash, subject, roles}`` entries.
        api_key_store: ``config`` or ``database`` (table ``<namespace>_api_keys``).
        issuer_private_key / issue_ttl: a PEM private key (RS/PS/ES/EdDSA) for
            :meth:`Authenticator.issue_token` (HS signs with ``jwt_secret``), and its default
            token lifetime in seconds.
    """

    # a rejected value may be a secret: pydantic's errors must not quote it
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    required: bool = True
    schemes: list[Literal["jwt", "api_key"]] = Field(default_factory=lambda: ["jwt"],
                                                      min_length=1)
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["RS256"])
    jwt_issuer: str | None = None
    jwt_audience: str | list[str] | None = None
    jwt_leeway: float = Field(default=30.0, ge=0, le=300)
    jwt_required_claims: list[str] = Field(default_factory=lambda: ["exp", "sub"])
    jwt_max_age: float | None = Field(default=None, gt=0)
    jwt_secret: SecretStr | None = None
    jwt_public_keys: dict[str, str] = Field(default_factory=dict)
    jwks_url: str | None = None
    jwks_file: str | None = None
    jwks_cache_ttl: float = Field(default=300, gt=0)
    jwks_min_refresh_interval: float = Field(default=30, ge=0)
    jwks_timeout: float = Field(default=5, gt=0)
    roles_claim: str = Field(default="roles", min_length=1)
    scopes_claim: str = Field(default="scope", min_length=1)
    tenant_claim: str | None = None
    verify_cache_size: int = Field(default=10000, ge=0)
    verify_cache_ttl: float = Field(default=60, ge=0)
    api_key_prefix: str = Field(default="onex_", pattern=r"^[A-Za-z0-9]*_?$")
    api_key_pepper: SecretStr | None = None
    api_keys: dict[str, ApiKeyEntry] = Field(default_factory=dict)
    api_key_store: Literal["config", "database"] = "config"
    issuer_private_key: SecretStr | None = None
    issue_ttl: float = Field(default=900, gt=0)

    @field_validator("schemes")
    @classmethod
    def _unique_schemes(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"schemes lists a scheme twice: {value}")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("jwks_url must be an http(s) URL (for a local file use jwks_file)")
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_key_ids(cls, value: dict[str, ApiKeyEntry]) -> dict[str, ApiKeyEntry]:
        bad = [k for k in value if not k.isalnum()]
        if bad:
            raise ValueError(f"api_keys ids must be letters and digits (no '_'): {bad}")
        return value

    def missing_keys(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Keys missing before setup can succeed, one line each with how to provide it (the
        node asks every capability first and reports all missing keys in one error).

        Example:
            >>> AuthenticationConfig().missing_keys(environ={})[0][:32]
            'no JWT verification key for RS25'
        """
        import os

        env = os.environ if environ is None else environ
        missing = []
        if "jwt" in self.schemes:
            if any(a.upper().startswith("HS") for a in self.jwt_algorithms):
                if self.jwt_secret is None and not env.get("ONEX_JWT_SECRET", "").strip():
                    missing.append(
                        f"no JWT secret for {', '.join(self.jwt_algorithms)}: set "
                        "authentication.jwt_secret or the environment variable ONEX_JWT_SECRET "
                        "(at least 32 random bytes)")
            elif not (self.jwt_public_keys or self.jwks_url or self.jwks_file
                      or self.issuer_private_key):
                missing.append(
                    f"no JWT verification key for {', '.join(self.jwt_algorithms)}: set "
                    "authentication.jwt_public_keys ({kid: PEM}), jwks_url or jwks_file (or "
                    "issuer_private_key to verify the tokens this node issues)")
        if "api_key" in self.schemes and self.api_key_pepper is None and not env.get(
                "ONEX_API_KEY_PEPPER", "").strip():
            missing.append("no API key pepper: set authentication.api_key_pepper or the "
                           "environment variable ONEX_API_KEY_PEPPER")
        return missing


class ApiKeyCreated:
    """A newly created API key: ``key`` is shown once and stored only as a hash.

    Example:
        >>> created = ApiKeyCreated("3f2a9c1e", "onex_3f2a9c1e_s3cr3t")
        >>> created
        ApiKeyCreated(key_id='3f2a9c1e', key=***)
    """

    __slots__ = ("key", "key_id")

    def __init__(self, key_id: str, key: str) -> None:
        self.key_id = key_id
        self.key = key

    def __repr__(self) -> str:
        return f"ApiKeyCreated(key_id={self.key_id!r}, key=***)"

    def __reduce__(self) -> Any:
        raise TypeError("ApiKeyCreated holds a secret key and does not pickle")


@runtime_checkable
class AuthenticationProtocol(Protocol):
    """What ``self.authenticator`` offers (the contract's actions)."""

    async def authenticate(self, credentials: Credentials | str | None) -> Principal: ...

    def authenticate_sync(self, credentials: Credentials | str | None) -> Principal: ...

    def as_principal(self, who: Principal) -> PrincipalScope: ...

    def issue_token(self, subject: str, *, roles: Any = (), scopes: Any = (),
                    tenant: str | None = None, ttl: float | None = None,
                    claims: Mapping[str, Any] | None = None) -> str: ...

    async def create_api_key(self, subject: str, *, roles: Any = (), scopes: Any = (),
                             tenant: str | None = None) -> ApiKeyCreated: ...

    async def revoke_api_key(self, key_id: str) -> None: ...

    def hash_api_key(self, key: str) -> str: ...

    async def refresh_jwks(self) -> int: ...
