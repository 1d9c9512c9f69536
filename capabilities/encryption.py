"""encryption: authenticated encryption with key ids, rotation, envelopes and field encryption.

``self.crypto`` encrypts with AES-256-GCM by default (``chacha20-poly1305`` is the other AEAD;
``fernet`` reads and writes ``cryptography.fernet`` tokens for interop). Keys come from config
(``keys``, a list of secrets ``"<key_id>:<base64url of 32 bytes>"``) or, when that is empty, from
the environment variable named by ``keys_env`` (``ONEX_ENCRYPTION_KEYS``, the same entries
comma-separated). The first key is the primary: it encrypts; the others only decrypt. Keys in
the environment stay out of pickles, because a node pickles by its configuration.

**Token format** (AEAD algorithms)::

    0x01 | len(key_id) | key_id | alg | nonce (12) | ciphertext || tag (16)

``alg`` is 1 for AES-256-GCM and 2 for ChaCha20-Poly1305. The header (everything before the
nonce) is authenticated together with the caller's AAD, so changing the key id or algorithm
byte fails like any other alteration. ``encrypt_str`` gives the text form: ``onex:v1:`` followed
by the unpadded base64url of the token. Nonces are random (96 bits), so one key may encrypt at
most ``max_uses_per_key`` times (2^32, NIST SP 800-38D) in this process; then
:class:`KeyExhaustedError` says to rotate.

**Fernet.** With ``algorithm: fernet``, ``encrypt`` returns a standard Fernet token and
``decrypt`` tries the keys in order (``MultiFernet``'s semantics; a Fernet key is the same 32
bytes in base64url). Fernet cannot bind associated data: a non-empty ``aad`` is refused with a
``ValueError`` rather than ignored. Tokens in the onex format decrypt under any algorithm
setting (the token names its algorithm).

**Envelopes.** :meth:`Encryption.envelope_encrypt` encrypts the data under a fresh data key
(AES-256-GCM) and wraps that key with the primary key (the KEK); :meth:`Encryption.rewrap`
re-wraps it under the current primary without touching the data ciphertext.

**Errors.** Every failure to decrypt is a :class:`DecryptionError` with one message (an attacker
learns nothing from the text); ``.reason`` says which for the caller: ``authentication_failed``,
``unknown_key`` (``.key_id`` names the id), ``malformed`` or ``unsupported_version``. Key material
problems are a ``ConfigurationError`` that names the entry's position and id, never its bytes.

``cryptography`` is imported at the first operation, not when the capability is composed or
set up (setup only checks that it is installed).

Example:
    >>> key = Encryption.generate_key("k1")
    >>> crypto = Encryption({"keys": [key]})
    >>> token = crypto.encrypt(b"4111", aad=b"orders:42:card")
    >>> crypto.decrypt(token, aad=b"orders:42:card")
    b'4111'
    >>> crypto
    <Encryption aes-256-gcm keys=['k1' (primary)]>
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import itertools
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter

from onex_compose import coerce_config, facility
from onex_compose.exceptions import ConfigurationError, OnexError

if TYPE_CHECKING:
    from onex_compose.capabilities.metrics import Metrics

__all__ = [
    "DecryptionError",
    "Encryption",
    "EncryptionConfig",
    "EncryptionProtocol",
    "Envelope",
    "KeyExhaustedError",
    "MixinEncryption",
]

M = TypeVar("M", bound=BaseModel)

VERSION = 0x01
TEXT_PREFIX = "onex:v1:"
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32
_ALG_IDS = {"aes-256-gcm": 1, "chacha20-poly1305": 2}
_ALG_NAMES = {v: k for k, v in _ALG_IDS.items()}
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_DEK_AAD = b"onex:envelope:dek"
_FERNET_TEXT = b"gAAAAA"  # a Fernet token (version 0x80) in base64url starts so
_MESSAGE = ("cannot decrypt: the token was altered, encrypted with another key or context, or is "
            "malformed")
_REASONS = ("authentication_failed", "unknown_key", "malformed", "unsupported_version")
_NO_KEY = ("no encryption key: set keys or ONEX_ENCRYPTION_KEYS; `onex keygen` prints one "
           "(or set allow_ephemeral_key: true for tests and demos)")

_ephemeral_warned = False
_urandom = os.urandom


class _NeverRaised(Exception):
    """Stands for ``cryptography.exceptions.InvalidTag`` until cryptography is imported."""


_InvalidTag: type[Exception] = _NeverRaised


def _no_count(value: float = 1) -> None:
    """The counter of a facility without metrics."""


# ------------------------------------------------------------------------------------------------
# errors


class DecryptionError(OnexError, ValueError):
    """A token could not be decrypted. The message is the same for every cause.

    Not retriable (the same token fails the same way) and neutral for a circuit breaker (the
    data is bad, not a dependency).

    Attributes:
        reason: ``authentication_failed``, ``unknown_key``, ``malformed`` or
            ``unsupported_version``.
        key_id: for ``unknown_key``, the id the token names (an id, never key material).

    Example:
        >>> err = DecryptionError("unknown_key", key_id="k1")
        >>> err.reason, err.key_id
        ('unknown_key', 'k1')
        >>> str(err).startswith("cannot decrypt: the token was altered")
        True
    """

    onex_retriable = False
    onex_breaker_neutral = True

    def __init__(self, reason: str, *, key_id: str | None = None) -> None:
        self.reason = reason if reason in _REASONS else "malformed"
        self.key_id = key_id
        super().__init__(_MESSAGE)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_decryption_error, (self.reason, self.key_id))


def _rebuild_decryption_error(reason: str, key_id: str | None) -> DecryptionError:
    return DecryptionError(reason, key_id=key_id)


class KeyExhaustedError(OnexError, RuntimeError):
    """The primary key reached ``max_uses_per_key`` encryptions in this process: rotate.

    Attributes:
        key_id: the exhausted key's id.
        limit: the configured bound.
    """

    onex_retriable = False
    onex_breaker_neutral = True

    def __init__(self, key_id: str, limit: int) -> None:
        self.key_id = key_id
        self.limit = limit
        super().__init__(
            f"encryption key {key_id!r} has been used for {limit} encryptions (max_uses_per_key):"
            " random 96-bit nonces are safe only up to that bound. Rotate: put a new key first in"
            " keys (`onex keygen` prints one) and keep this one after it to decrypt old tokens")

    def __reduce__(self) -> tuple[Any, ...]:
        return (KeyExhaustedError, (self.key_id, self.limit))


# ------------------------------------------------------------------------------------------------
# config


class EncryptionConfig(BaseModel):
    """The ``encryption`` subcontract (every key of ``encryption_config``).

    Attributes:
        algorithm: what ``encrypt`` uses: ``aes-256-gcm``, ``chacha20-poly1305`` or ``fernet``.
        keys: ``"<key_id>:<base64url 32 bytes>"`` secrets; the first is primary.
        keys_env: the environment variable read when ``keys`` is empty (comma-separated).
        allow_ephemeral_key: with no key at all, use a random in-process key (tests, demos).
        max_uses_per_key: encryptions allowed per key in this process.
    """

    # a rejected value may be key material: pydantic's errors must not quote it
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    algorithm: Literal["aes-256-gcm", "chacha20-poly1305", "fernet"] = "aes-256-gcm"
    keys: list[SecretStr] = Field(default_factory=list)
    keys_env: str = Field(default="ONEX_ENCRYPTION_KEYS", min_length=1)
    allow_ephemeral_key: bool = False
    max_uses_per_key: int = Field(default=4294967296, ge=1)

    def missing_keys(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """What is missing before setup can succeed, one line per key with how to provide it
        (the node asks every capability first and reports all missing keys in one error).

        Example:
            >>> EncryptionConfig().missing_keys(environ={})[0][:40]
            'no encryption key (encryption.keys): set'
            >>> EncryptionConfig(allow_ephemeral_key=True).missing_keys(environ={})
            []
        """
        env = os.environ if environ is None else environ
        if self.keys or env.get(self.keys_env, "").strip() or self.allow_ephemeral_key:
            return []
        return [f"no encryption key (encryption.keys): set capability_config encryption.keys "
                f"to ['<key_id>:<base64url of 32 bytes>'] or the environment variable "
                f"{self.keys_env} (comma-separated); `onex keygen` prints one "
                "(allow_ephemeral_key: true for tests and demos)"]


def _require_cryptography() -> None:
    if importlib.util.find_spec("cryptography") is None:
        raise ConfigurationError(
            "encryption needs the cryptography package, which is not installed. Install it "
            "with: pip install 'onex-compose[crypto]'", capability="encryption")


def _b64decode(text: str) -> bytes | None:
    """Strict, canonical base64url (padding optional); ``None`` if ``text`` is not that."""
    body = text.rstrip("=")
    if len(text) - len(body) > 2 or _B64URL.fullmatch(body) is None or len(body) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != body:
        return None  # non-zero padding bits: another text for the same bytes
    return raw


def _parse_keys(entries: Sequence[str], source: str) -> list[tuple[str, bytes]]:
    """``[(key_id, 32 bytes)]`` from ``"<id>:<base64url>"`` entries; errors never show bytes."""
    problems: list[str] = []
    keys: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source}[{i}]"
        key_id, sep, material = entry.strip().partition(":")
        if not sep:
            problems.append(f"{where}: expected '<key_id>:<base64url of 32 bytes>' (no ':' found;"
                            " the value is not shown)")
            continue
        if _KEY_ID.fullmatch(key_id) is None:
            problems.append(f"{where}: the key id must be 1-64 of A-Z a-z 0-9 . _ - (the value is"
                            " not shown)")
            continue
        raw = _b64decode(material.strip())
        if raw is None:
            problems.append(f"{where} (id {key_id!r}): the key material is not base64url")
            continue
        if len(raw) != KEY_SIZE:
            problems.append(f"{where} (id {key_id!r}): the key material is {len(raw)} bytes, "
                            f"expected {KEY_SIZE}")
            continue
        if key_id in seen:
            problems.append(f"{where}: duplicate key id {key_id!r}")
            continue
        seen.add(key_id)
        keys.append((key_id, raw))
    if problems:
        raise ConfigurationError(
            "encryption: invalid key material (generate keys with `onex keygen`)",
            capability="encryption", problems=problems)
    return keys


# ------------------------------------------------------------------------------------------------
# the facility


@dataclass(frozen=True)
class Envelope:
    """Envelope encryption's result: the data under a data key, the data key under a KEK.

    Attributes:
        kek_id: the id of the key that wrapped the data key.
        wrapped_dek: the data key, as an encryption token under ``kek_id``.
        nonce: the data ciphertext's nonce (12 bytes).
        ciphertext: the data, AES-256-GCM with the data key (tag included).
    """

    kek_id: str
    wrapped_dek: bytes
    nonce: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return (f"Envelope(kek_id={self.kek_id!r}, wrapped_dek=<{len(self.wrapped_dek)} bytes>, "
                f"ciphertext=<{len(self.ciphertext)} bytes>)")

    def to_bytes(self) -> bytes:
        """One byte string: ``0x01 | len(wrapped_dek) (2 bytes) | wrapped_dek | nonce |
        ciphertext`` (the KEK id is inside the wrapped key's token)."""
        return (bytes((VERSION,)) + len(self.wrapped_dek).to_bytes(2, "big") + self.wrapped_dek
                + self.nonce + self.ciphertext)

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """The envelope :meth:`to_bytes` wrote (``DecryptionError`` if it is not one)."""
        if len(data) < 3:
            raise DecryptionError("malformed")
        if data[0] != VERSION:
            raise DecryptionError("unsupported_version")
        n = int.from_bytes(data[1:3], "big")
        wrapped = data[3:3 + n]
        rest = data[3 + n:]
        if len(wrapped) != n or len(rest) < NONCE_SIZE + TAG_SIZE or n < 2:
            raise DecryptionError("malformed")
        kek_id = wrapped[2:2 + wrapped[1]].decode("ascii", "replace")
        return cls(kek_id, wrapped, rest[:NONCE_SIZE], rest[NONCE_SIZE:])


class EncryptionProtocol(Protocol):
    """What the ``crypto`` facility offers (the contract's actions)."""

    def encrypt(self, data: bytes, aad: bytes = b"") -> bytes: ...

    def decrypt(self, token: bytes | str, aad: bytes = b"") -> bytes: ...

    def rotate(self, token: bytes, aad: bytes = b"") -> bytes: ...

    def envelope_encrypt(self, plaintext: bytes, aad: bytes = b"") -> Envelope: ...

    def rewrap(self, envelope: Envelope) -> Envelope: ...


class Encryption:
    """Authenticated encryption under a key ring (the ``crypto`` facility).

    Args:
        config: an :class:`EncryptionConfig`, a mapping of its fields, or ``None``.
        metrics: the node's metrics facility, or ``None``.
        environ: where ``keys_env`` is read (default ``os.environ``).

    Raises:
        ConfigurationError: no key and no ephemeral key allowed, invalid key material, or
            ``cryptography`` not installed.
    """

    def __init__(self, config: EncryptionConfig | Mapping[str, Any] | None = None, *,
                 metrics: Metrics | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        cfg: EncryptionConfig = coerce_config(EncryptionConfig, config, "encryption")
        _require_cryptography()
        self.config = cfg
        self._counters: dict[tuple[str, str], Callable[..., None]] = {}
        # built at the first operation (the import of cryptography waits until then):
        # encrypt's (cipher, header, use counter, bound metric counter, limit), None for
        # fernet; decrypt's token header -> (cipher, bound metric counter), every key and
        # AEAD algorithm
        self._enc: tuple[Any, bytes, Iterator[int], Callable[..., None], int] | None = None
        self._by_header: dict[bytes, tuple[Any, Callable[..., None]]] | None = None
        self.metrics = metrics
        self.algorithm = cfg.algorithm
        env = os.environ if environ is None else environ
        self.ephemeral = False
        if cfg.keys:
            ring = _parse_keys([k.get_secret_value() for k in cfg.keys], "keys")
        elif env.get(cfg.keys_env, "").strip():
            ring = _parse_keys([e for e in env[cfg.keys_env].split(",") if e.strip()],
                               cfg.keys_env)
        elif cfg.allow_ephemeral_key:
            ring = [(f"ephemeral-{secrets.token_hex(4)}", secrets.token_bytes(KEY_SIZE))]
            self.ephemeral = True
            _warn_ephemeral()
        else:
            raise ConfigurationError(_NO_KEY, capability="encryption")
        self._keys: dict[str, bytes] = dict(ring)
        self._key_ids_b = {kid.encode("ascii"): kid for kid in self._keys}
        self._order = [kid for kid, _ in ring]
        self.primary_key_id: str = ring[0][0]
        # one counter per key: next() on an itertools.count is atomic, so exact across threads
        self._uses: dict[str, Iterator[int]] = {kid: itertools.count() for kid in self._order}
        self._limit = cfg.max_uses_per_key
        self._ciphers: dict[tuple[str, int], Any] = {}
        self._fernet: Any = None  # MultiFernet, built at first use
        self._fernets: dict[str, Any] = {}
        alg = _ALG_IDS.get(cfg.algorithm, 1)
        kid_b = self.primary_key_id.encode("ascii")
        self._alg = alg
        self._header = bytes((VERSION, len(kid_b))) + kid_b + bytes((alg,))
        from onex_compose.capabilities._log import logger

        logger.debug("encryption: {} with keys {} (from {})", cfg.algorithm,
                     self._describe_keys(),
                     "config" if cfg.keys else "ephemeral" if self.ephemeral else cfg.keys_env)

    # -- description ---------------------------------------------------------------------------

    @property
    def key_ids(self) -> list[str]:
        """The key ids, primary first (ids only, never material)."""
        return list(self._order)

    def _describe_keys(self) -> str:
        return "[" + ", ".join(repr(k) + (" (primary)" if i == 0 else "")
                               for i, k in enumerate(self._order)) + "]"

    def __repr__(self) -> str:
        return f"<Encryption {self.algorithm} keys={self._describe_keys()}>"

    def __reduce__(self) -> Any:
        raise TypeError("an Encryption facility does not pickle (it holds key material); "
                        "pickle the node, whose keys come back from keys_env")

    @staticmethod
    def generate_key(key_id: str | None = None) -> str:
        """A new key entry ``"<key_id>:<base64url of 32 random bytes>"`` (also a Fernet key).

        Example:
            >>> entry = Encryption.generate_key("k2")
            >>> entry.startswith("k2:"), len(entry)
            (True, 47)
        """
        kid = key_id if key_id is not None else f"k{secrets.token_hex(4)}"
        if _KEY_ID.fullmatch(kid) is None:
            raise ValueError(f"key id {kid!r} must be 1-64 of A-Z a-z 0-9 . _ -")
        return f"{kid}:{base64.urlsafe_b64encode(secrets.token_bytes(KEY_SIZE)).decode('ascii')}"

    # -- internals ------------------------------------------------------------------------------

    def _cipher(self, key_id: str, alg: int) -> Any:
        cipher = self._ciphers.get((key_id, alg))
        if cipher is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

            cls = AESGCM if alg == 1 else ChaCha20Poly1305
            cipher = self._ciphers[(key_id, alg)] = cls(self._keys[key_id])
        return cipher

    def _multifernet(self) -> Any:
        if self._fernet is None:
            if self._by_header is None:
                self._prime()
            from cryptography.fernet import Fernet, MultiFernet

            self._fernets = {kid: Fernet(base64.urlsafe_b64encode(self._keys[kid]))
                             for kid in self._order}
            self._fernet = MultiFernet([self._fernets[k] for k in self._order])
        return self._fernet

    @property
    def metrics(self) -> Metrics | None:
        """Where operations and decryption failures are counted (``None``: not counted).

        Operations count through bound counters (:meth:`Metrics.bind_counter`, one per
        ``(op, key_id)``), resolved at first use; assigning another facility rebinds them.
        """
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        self._counters = {}
        if self._by_header is not None:  # the fast paths' counters: rebuilt by _prime()
            self._prime()

    def _counter(self, op: str, key_id: str) -> Callable[..., None]:
        """The bound ``encryption_operations_total{op, key_id}`` counter (made once)."""
        counter = self._counters.get((op, key_id))
        if counter is None:
            metrics = self._metrics
            if metrics is None:
                counter = _no_count
            else:
                counter = metrics.bind_counter("encryption_operations_total",
                                               {"op": op, "key_id": key_id})
            self._counters[(op, key_id)] = counter
        return counter

    def _count(self, op: str, key_id: str) -> None:
        self._counter(op, key_id)()

    def _failed(self, reason: str, key_id: str | None = None) -> DecryptionError:
        self._counter_failed(reason)()
        return DecryptionError(reason, key_id=key_id)

    def keep_use_counts(self, previous: Encryption) -> None:
        """Carry the use counts of ``previous`` (the facility this one replaces) over for the
        keys both hold with the same material, so reconfiguring never resets a key's count
        towards ``max_uses_per_key``."""
        for kid, material in self._keys.items():
            if previous._keys.get(kid) == material and self._enc is None:
                self._uses[kid] = previous._uses[kid]

    def _use(self, key_id: str) -> None:
        if next(self._uses[key_id]) >= self._limit:
            raise KeyExhaustedError(key_id, self._limit)

    def _counter_failed(self, reason: str) -> Callable[..., None]:
        """The bound ``decryption_failures_total{reason}`` counter (made once)."""
        counter = self._counters.get(("failed", reason))
        if counter is None:
            metrics = self._metrics
            counter = _no_count if metrics is None else metrics.bind_counter(
                "decryption_failures_total", {"reason": reason})
            self._counters[("failed", reason)] = counter
        return counter

    def _prime(self) -> dict[bytes, tuple[Any, Callable[..., None]]]:
        """Build the ciphers of every key (imports cryptography); returns the header table."""
        global _InvalidTag
        from cryptography.exceptions import InvalidTag

        _InvalidTag = InvalidTag
        table: dict[bytes, tuple[Any, Callable[..., None]]] = {}
        for kid in self._order:
            kid_b = kid.encode("ascii")
            for alg in _ALG_NAMES:
                header = bytes((VERSION, len(kid_b))) + kid_b + bytes((alg,))
                table[header] = (self._cipher(kid, alg), self._counter("decrypt", kid))
        if self.algorithm != "fernet":
            kid = self.primary_key_id
            self._enc = (self._cipher(kid, self._alg), self._header, self._uses[kid],
                         self._counter("encrypt", kid), self._limit)
        self._by_header = table
        return table

    @staticmethod
    def _no_aad(aad: bytes) -> None:
        if aad:
            raise ValueError("fernet tokens cannot bind associated data (aad): use algorithm "
                             "aes-256-gcm or chacha20-poly1305, or pass aad=b''")

    def _seal(self, data: bytes, aad: bytes) -> bytes:
        """A token under the primary key (counts a use; no metric)."""
        kid = self.primary_key_id
        self._use(kid)
        if self.algorithm == "fernet":
            self._no_aad(aad)
            return cast(bytes, self._multifernet().encrypt(data))
        state = self._enc
        if state is None:
            self._prime()
            state = self._enc
        assert state is not None
        cipher, header = state[0], state[1]
        nonce = os.urandom(NONCE_SIZE)
        return header + nonce + cipher.encrypt(nonce, data, header + aad)

    def _binary(self, token: bytes | str) -> bytes:
        """The binary token of either form (``DecryptionError`` for anything else)."""
        if isinstance(token, str):
            if token.startswith(TEXT_PREFIX):
                raw = _b64decode(token[len(TEXT_PREFIX):])
                if raw is None:
                    raise self._failed("malformed")
                return raw
            if re.match(r"onex:v\d+:", token):
                raise self._failed("unsupported_version")
            try:
                return token.encode("ascii")
            except UnicodeEncodeError:
                raise self._failed("malformed") from None
        if not isinstance(token, bytes | bytearray | memoryview):
            raise TypeError(f"a token is bytes or str, got {type(token).__name__}")
        token = bytes(token)
        if token.startswith(TEXT_PREFIX.encode()):
            return self._binary(token.decode("ascii", "replace"))
        return token

    def _parse(self, token: bytes) -> tuple[str, int, bytes, bytes, bytes]:
        """``(key_id, alg, header, nonce, ciphertext)`` of an onex binary token."""
        if not token:
            raise self._failed("malformed")
        if token[0] != VERSION:
            raise self._failed("unsupported_version" if 1 < token[0] < 0x20 else "malformed")
        n = token[1] if len(token) > 1 else 0
        end = 2 + n
        if n == 0 or len(token) < end + 1 + NONCE_SIZE + TAG_SIZE:
            raise self._failed("malformed")
        kid = self._key_ids_b.get(token[2:end])
        if kid is None:
            shown = token[2:end].decode("ascii", "replace")
            if _KEY_ID.fullmatch(shown) is None:
                raise self._failed("malformed")
            raise self._failed("unknown_key", shown)
        alg = token[end]
        if alg not in _ALG_NAMES:
            raise self._failed("malformed")
        return kid, alg, token[:end + 1], token[end + 1:end + 1 + NONCE_SIZE], \
            token[end + 1 + NONCE_SIZE:]

    def _open(self, token: bytes, aad: bytes) -> tuple[bytes, str | None]:
        """``(plaintext, key_id)`` of a binary token (``key_id`` None for a Fernet token whose
        key is not known by id)."""
        if token[:6] == _FERNET_TEXT:
            if self.algorithm != "fernet":
                raise self._failed("malformed")
            self._no_aad(aad)
            from cryptography.fernet import InvalidToken

            self._multifernet()
            for kid in self._order:  # MultiFernet.decrypt, knowing which key opened it
                try:
                    return self._fernets[kid].decrypt(token), kid
                except InvalidToken:
                    continue
            raise self._failed("authentication_failed")
        kid, alg, header, nonce, ct = self._parse(token)
        if self._by_header is None:
            self._prime()
        try:
            return self._cipher(kid, alg).decrypt(nonce, ct, header + aad), kid
        except _InvalidTag:
            raise self._failed("authentication_failed") from None

    # -- public API -----------------------------------------------------------------------------

    def encrypt(self, data: bytes, aad: bytes = b"") -> bytes:
        """Encrypt ``data`` under the primary key, bound to ``aad`` (the binary token).

        Raises:
            KeyExhaustedError: the primary key reached ``max_uses_per_key``.
            ValueError: ``algorithm: fernet`` with a non-empty ``aad``.
        """
        state = self._enc
        if state is None:  # fernet, or the first call
            token = self._seal(data, aad)
            self._count("encrypt", self.primary_key_id)
            return token
        cipher, header, uses, count, limit = state
        if next(uses) >= limit:
            raise KeyExhaustedError(self.primary_key_id, limit)
        nonce = _urandom(12)  # NONCE_SIZE
        token = header + nonce + cipher.encrypt(nonce, data, header + aad)
        count()
        return token

    def decrypt(self, token: bytes | str, aad: bytes = b"") -> bytes:
        """The plaintext of ``token`` (binary or text form), checked against ``aad``.

        Raises:
            DecryptionError: altered, another key or context, malformed, or unknown version.
        """
        table = self._by_header
        if table is not None and token.__class__ is bytes and len(token) > 31 and token[0] == 1:
            # the fast path: a binary token under a known key (anything else takes the slow
            # one); 28 = NONCE_SIZE + TAG_SIZE
            end = 3 + token[1]
            header = token[:end]
            entry = table.get(header)
            if entry is not None and len(token) >= end + 28:
                try:
                    plain: bytes = entry[0].decrypt(token[end:end + 12], token[end + 12:],
                                                    header + aad)
                except _InvalidTag:
                    raise self._failed("authentication_failed") from None
                entry[1]()
                return plain
        plain, kid = self._open(self._binary(token), aad)
        self._count("decrypt", kid or self.primary_key_id)
        return plain

    def encrypt_str(self, text: str, aad: bytes = b"") -> str:
        """``text`` encrypted, as text: ``onex:v1:<base64url>`` (a Fernet token with fernet)."""
        token = self.encrypt(text.encode("utf-8"), aad)
        if self.algorithm == "fernet":
            return token.decode("ascii")
        return TEXT_PREFIX + base64.urlsafe_b64encode(token).decode("ascii").rstrip("=")

    def decrypt_str(self, token: str, aad: bytes = b"") -> str:
        """The text :meth:`encrypt_str` encrypted."""
        plain = self.decrypt(token, aad)
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:
            raise self._failed("malformed") from None

    def needs_rotation(self, token: bytes | str) -> bool:
        """Whether ``token`` was made under a key other than the primary (no decryption for the
        onex format; a Fernet token is checked against the primary key)."""
        raw = self._binary(token)
        if raw[:6] == _FERNET_TEXT and self.algorithm == "fernet":
            from cryptography.fernet import InvalidToken

            self._multifernet()
            try:
                self._fernets[self.primary_key_id].decrypt(raw)
            except InvalidToken:
                self._open(raw, b"")  # raises DecryptionError when no key opens it
                return True
            return False
        return self._parse(raw)[0] != self.primary_key_id

    def rotate(self, token: bytes | str, aad: bytes = b"") -> Any:
        """``token`` re-encrypted under the primary key (the same token if it already is).

        The result has the form of the input (bytes or text). A Fernet token keeps its
        timestamp, as ``MultiFernet.rotate`` does.
        """
        if not self.needs_rotation(token):
            return token
        raw = self._binary(token)
        if raw[:6] == _FERNET_TEXT:
            self._no_aad(aad)
            self._use(self.primary_key_id)
            new = cast(bytes, self._multifernet().rotate(raw))
        else:
            plain, _ = self._open(raw, aad)
            new = self._seal(plain, aad)
        self._count("rotate", self.primary_key_id)
        if isinstance(token, str):
            if token.startswith(TEXT_PREFIX):
                return TEXT_PREFIX + base64.urlsafe_b64encode(new).decode("ascii").rstrip("=")
            return new.decode("ascii")
        return new

    def envelope_encrypt(self, plaintext: bytes, aad: bytes = b"") -> Envelope:
        """``plaintext`` under a fresh AES-256-GCM data key wrapped by the primary key."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        dek = secrets.token_bytes(KEY_SIZE)
        nonce = os.urandom(NONCE_SIZE)
        ciphertext = AESGCM(dek).encrypt(nonce, plaintext, aad or None)
        wrapped = self._seal(dek, b"" if self.algorithm == "fernet" else _DEK_AAD)
        self._count("encrypt", self.primary_key_id)
        return Envelope(self.primary_key_id, wrapped, nonce, ciphertext)

    def _unwrap(self, envelope: Envelope) -> bytes:
        raw = envelope.wrapped_dek
        dek, _ = self._open(raw, b"" if raw[:6] == _FERNET_TEXT else _DEK_AAD)
        if len(dek) != KEY_SIZE:
            raise self._failed("malformed")
        return dek

    def envelope_decrypt(self, envelope: Envelope, aad: bytes = b"") -> bytes:
        """The plaintext of an :class:`Envelope` (``DecryptionError`` as :meth:`decrypt`)."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if self._by_header is None:
            self._prime()
        dek = self._unwrap(envelope)
        if len(envelope.nonce) != NONCE_SIZE:
            raise self._failed("malformed")
        try:
            plain = AESGCM(dek).decrypt(envelope.nonce, envelope.ciphertext, aad or None)
        except _InvalidTag:
            raise self._failed("authentication_failed") from None
        self._count("decrypt", envelope.kek_id)
        return plain

    def rewrap(self, envelope: Envelope) -> Envelope:
        """The envelope with its data key wrapped by the primary key; the data ciphertext and
        nonce are untouched (the same envelope if the primary already wraps it)."""
        raw = envelope.wrapped_dek
        if raw[:6] != _FERNET_TEXT and self._parse(raw)[0] == self.primary_key_id:
            return envelope
        dek = self._unwrap(envelope)
        wrapped = self._seal(dek, b"" if self.algorithm == "fernet" else _DEK_AAD)
        self._count("rewrap", self.primary_key_id)
        return Envelope(self.primary_key_id, wrapped, envelope.nonce, envelope.ciphertext)

    # -- Pydantic models ------------------------------------------------------------------------

    @staticmethod
    def _field_adapter(cls: type[BaseModel], name: str) -> TypeAdapter[Any]:
        fields = cls.model_fields
        if name not in fields:
            raise ValueError(f"{cls.__name__} has no field {name!r}; fields: "
                             f"{', '.join(fields)}")
        return _adapter(fields[name].annotation)

    def _field_aad(self, cls: type[BaseModel], name: str, aad: bytes | None) -> bytes:
        if aad is not None:
            return aad
        return b"" if self.algorithm == "fernet" else f"{cls.__name__}.{name}".encode()

    def encrypt_fields(self, model: M, fields: Iterable[str], *, aad: bytes | None = None) -> M:
        """A copy of ``model`` whose ``fields`` hold :meth:`encrypt_str` tokens of their JSON
        values. The AAD defaults to ``"<Model>.<field>"`` (a token moved to another field or
        model does not decrypt); with ``fernet``, which binds no AAD, it defaults to none.

        The copy is not re-validated (a non-``str`` field holds a token string until
        :meth:`decrypt_fields`).
        """
        cls = type(model)
        update: dict[str, Any] = {}
        for name in fields:
            adapter = self._field_adapter(cls, name)
            value = adapter.dump_json(getattr(model, name))
            update[name] = self.encrypt_str(value.decode("utf-8"), self._field_aad(cls, name, aad))
        return model.model_copy(update=update)

    def decrypt_fields(self, model: M, fields: Iterable[str], *, aad: bytes | None = None) -> M:
        """The inverse of :meth:`encrypt_fields`: the fields decrypted and validated into their
        declared types (``DecryptionError`` if one was altered or moved)."""
        cls = type(model)
        update: dict[str, Any] = {}
        for name in fields:
            adapter = self._field_adapter(cls, name)
            token = getattr(model, name)
            if not isinstance(token, str):
                raise self._failed("malformed")
            text = self.decrypt_str(token, self._field_aad(cls, name, aad))
            update[name] = adapter.validate_json(text)
        return model.model_copy(update=update)


_adapters: dict[Any, TypeAdapter[Any]] = {}


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    try:
        adapter = _adapters.get(annotation)
    except TypeError:  # unhashable annotation
        return TypeAdapter(annotation)
    if adapter is None:
        adapter = _adapters[annotation] = TypeAdapter(annotation)
    return adapter


def _warn_ephemeral() -> None:
    global _ephemeral_warned
    if _ephemeral_warned:
        return
    _ephemeral_warned = True
    from onex_compose.capabilities._log import logger

    logger.warning("encryption: no key configured; using a random in-process key "
                   "(allow_ephemeral_key). Tokens will not decrypt in another process or after a "
                   "restart: set keys or ONEX_ENCRYPTION_KEYS (`onex keygen` prints one)")


# ------------------------------------------------------------------------------------------------
# the mixin


class MixinEncryption:
    """Data encryption and secure storage: ``self.crypto`` (an :class:`Encryption`).

    Requires ``metrics`` (operations and decryption failures are counted).

    Example:
        >>> from onex_compose import NodeEffect, compose
        >>> Service = compose(NodeEffect, ["encryption"])  # doctest: +SKIP
        >>> node = Service(capability_config={"encryption": {"allow_ephemeral_key": True}})
        ... # doctest: +SKIP
        >>> node.crypto.decrypt(node.crypto.encrypt(b"x"))  # doctest: +SKIP
        b'x'
    """

    __onex_capability__ = "encryption"
    __slots__ = ()

    def setup_encryption(self, config: EncryptionConfig | Mapping[str, Any] | None = None
                         ) -> None:
        """Load the key ring from config (or ``keys_env``); fails without a key unless
        ``allow_ephemeral_key``."""
        cfg = coerce_config(EncryptionConfig, config, "encryption")
        node = cast(Any, self)
        old = getattr(node, "crypto", None)
        crypto = Encryption(cfg, metrics=node.metrics)
        if isinstance(old, Encryption):
            crypto.keep_use_counts(old)
        node.crypto = crypto

    @facility
    def crypto(self) -> Encryption:
        """The node's encryption facility (default config when setup never ran)."""
        return Encryption(EncryptionConfig(), metrics=cast(Any, self).metrics)
