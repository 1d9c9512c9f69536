"""The one secret scrubber: every error, log record and report that quotes a value uses it.

Rules (the same everywhere; only the mask text differs, ``***`` by default):

* **Sensitive key names.** In a mapping, the value under a key whose name contains one of
  :data:`DEFAULT_KEYS` (case-insensitive, ``-`` read as ``_``: ``password``, ``X-Api-Key``,
  ``db_password``...) or equals one of :data:`DEFAULT_EXACT_KEYS` (``auth``, ``pin``...) is
  replaced whole, whatever its type.
* **Secrets in text** (any string, at any depth, and the ``repr`` of other objects when quoted):
  URL passwords (``scheme://user:PASS@``), ``key=value`` / ``key: value`` pairs and query
  parameters with a sensitive key (``?password=...&token=...``), ``Bearer``/``Basic``
  credentials, JWTs, card numbers (Luhn-checked) and the local part of e-mail addresses.
* **Nested mappings and sequences** (lists, tuples, namedtuples, sets) are walked to a bounded
  depth; deeper levels become ``[TOO DEEP]`` (so a cycle ends). A ``(name, value)`` pair (a
  2-tuple, as header and form-field lists hold them) with a sensitive name is masked like a
  mapping entry.
* **Bounded length.** :func:`quote` (what error messages use) cuts the scrubbed text to a limit;
  it scrubs first and cuts after, so a cut never reveals part of a secret.

Example:
    >>> scrub({"user": "ann", "db_password": "x", "dsn": "redis://u:hunter2@h/0?token=t"})
    {'user': 'ann', 'db_password': '***', 'dsn': 'redis://u:***@h/0?token=***'}
    >>> scrub("redis://:hunter2@cache:6379/0?password=again")
    'redis://:***@cache:6379/0?password=***'
    >>> quote({"url": "redis://:hunter2@cache/0"})
    "{'url': 'redis://:***@cache/0'}"
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_EXACT_KEYS",
    "DEFAULT_KEYS",
    "MASK",
    "Redactor",
    "quote",
    "scrub",
    "scrub_text",
    "sensitive_field",
]

MASK = "***"
DEFAULT_KEYS: tuple[str, ...] = (
    "password", "passwd", "passphrase", "pwd", "secret", "token", "api_key", "apikey",
    "access_key", "private_key", "authorization", "authentication", "credential", "cookie",
    "session", "credit_card", "card_number")
"""Key fragments whose values are scrubbed (a key matches when it contains one)."""
DEFAULT_EXACT_KEYS: tuple[str, ...] = ("auth", "pin", "cvv")
"""Key names whose values are scrubbed when the whole key equals one (too short for fragments)."""

MAX_DEPTH = 12
_SCALARS = (int, float, bool, type(None))

#: configuration field names whose invalid values an error never echoes at all (conventions 5)
_NEVER_ECHO = re.compile(r"(?i)pass|secret|token|key|url|dsn|auth|cred")


def sensitive_field(path: str) -> bool:
    """Whether an error about the configuration field ``path`` must not quote its value.

    Broader than the scrubber's key rule: a field named ``*url``, ``*key`` or ``*dsn`` may hold a
    credential in a form the text rules do not recognise, so its rejected value is not shown.

    Example:
        >>> sensitive_field("redis_url"), sensitive_field("max_attempts")
        (True, False)
    """
    return _NEVER_ECHO.search(path) is not None


def _normal(key: str) -> str:
    return key.lower().replace("-", "_")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# the text rules, each applied only when a cheap substring test says it may match (most log
# messages hold no secret: they pay for a few ``in`` tests, not for the regular expressions)
_URL = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*+://[^\s:/@]*+:)[^\s/]+@")
_BEARER = re.compile(r"(\b(?i:bearer|basic)\s+)[A-Za-z0-9\-._~+/]++=*")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]++\.[A-Za-z0-9_-]++\.[A-Za-z0-9_-]*+")
#: a key followed by ``=``/``:`` (or a quoted key and a comma, as in a pair's repr)
_KEY = re.compile(r"(?<![A-Za-z0-9_.-])([A-Za-z0-9_.-]{1,80}+)(?:['\"]?\s*[=:]|['\"]\s*,)\s*")
_VALUE = re.compile(r"(?P<prefix>(?:(?i:bearer|basic|token)\s+)?)"
                    r"(?:(?P<q>['\"])(?:(?!(?P=q)).)*(?P=q)|[^\s,;&'\"}\])]+)")
_CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]++(@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b)")


class Redactor:
    """The scrubber with a key list and a mask (the module-level functions use the defaults).

    Args:
        keys: key-name fragments whose values are replaced (default :data:`DEFAULT_KEYS`).
        exact: key names matched whole (default :data:`DEFAULT_EXACT_KEYS`).
        mask: the replacement text.

    Example:
        >>> Redactor(["ssn"], mask="[REDACTED]").value({"SSN": 1, "note": "Bearer abc"})
        {'SSN': '[REDACTED]', 'note': 'Bearer [REDACTED]'}
    """

    __slots__ = ("_exact", "_gate", "keys", "mask")

    def __init__(self, keys: Iterable[str] = DEFAULT_KEYS,
                 exact: Iterable[str] = DEFAULT_EXACT_KEYS, mask: str = MASK) -> None:
        self.keys = tuple(_normal(k) for k in keys)
        self._exact = frozenset(_normal(k) for k in exact)
        self.mask = mask
        # what a text must contain (lower case, '_' and '-' dropped) for a key rule to apply
        self._gate = tuple({k.replace("_", "") for k in (*self.keys, *self._exact)})

    def __repr__(self) -> str:
        return f"Redactor(keys={list(self.keys)!r}, mask={self.mask!r})"

    def sensitive(self, key: Any) -> bool:
        """Whether values under the mapping key ``key`` are replaced whole."""
        if not isinstance(key, str):
            return False
        norm = _normal(key)
        return norm in self._exact or any(k in norm for k in self.keys)

    def _pairs(self, text: str) -> str:
        out: list[str] = []
        last = 0
        for key in _KEY.finditer(text):
            if key.start() < last or not self.sensitive(key.group(1)):
                continue
            value = _VALUE.match(text, key.end())
            if value is None or text.startswith(self.mask,
                                                value.start() + len(value.group("prefix"))):
                continue  # no value, or one an earlier rule already masked
            quote = value.group("q") or ""
            out.append(text[last:value.start()] + value.group("prefix") + quote + self.mask
                       + quote)
            last = value.end()
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def text(self, text: str) -> str:
        """``text`` with every secret the text rules recognise masked."""
        if not text:
            return text
        mask = self.mask
        if "://" in text:
            text = _URL.sub(lambda m: m.group(1) + mask + "@", text)
        if "eyJ" in text:
            text = _JWT.sub(mask, text)
        low = text.lower()
        if "bearer" in low or "basic" in low:
            text = _BEARER.sub(lambda m: m.group(1) + mask, text)
        flat = low.replace("_", "").replace("-", "")
        if any(k in flat for k in self._gate):
            text = self._pairs(text)
        if "@" in text:
            text = _EMAIL.sub(lambda m: mask + m.group(1), text)
        if _CARD.search(text):
            text = _CARD.sub(self._card, text)
        return text

    def _card(self, match: re.Match[str]) -> str:
        card = match.group(0)
        return self.mask if _luhn(card.replace(" ", "").replace("-", "")) else card

    def value(self, value: Any, depth: int = 0) -> Any:
        """A scrubbed copy of ``value`` (the same object when nothing needed scrubbing).

        Strings go through the text rules; mappings, lists, tuples (namedtuples keep their
        type) and sets are walked; other objects are returned as they are (:func:`quote`
        scrubs their ``repr``).
        """
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, _SCALARS):
            return value
        if depth >= MAX_DEPTH:
            return "[TOO DEEP]"
        if isinstance(value, Mapping):
            out = {}
            changed = False
            for k, v in value.items():
                new = self.mask if self.sensitive(k) else self.value(v, depth + 1)
                changed = changed or new is not v
                out[k] = new
            return out if changed else value
        if (type(value) is tuple and len(value) == 2 and isinstance(value[0], str)
                and self.sensitive(value[0])):
            return (value[0], self.mask)  # a (name, value) pair: headers, form fields
        if isinstance(value, list | tuple | set | frozenset):
            items = [self.value(v, depth + 1) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            if isinstance(value, list):
                return items
            if isinstance(value, set | frozenset):
                try:
                    return type(value)(items)
                except TypeError:  # an unhashable scrubbed item
                    return items
            if type(value) is not tuple and hasattr(value, "_fields"):  # a namedtuple
                return type(value)(*items)
            return tuple(items)
        return value

    def quote(self, value: Any, limit: int = 120) -> str:
        """The ``repr`` of the scrubbed ``value``, text rules applied, cut to ``limit`` chars."""
        shown = self.text(repr(self.value(value)))
        return shown if len(shown) <= limit else shown[:limit] + "..."


_default = Redactor()


def scrub(value: Any) -> Any:
    """``value`` with secrets masked by ``***`` (see the module docstring for the rules).

    Example:
        >>> scrub(["ok", {"Authorization": "Bearer x"}, "password=hunter2"])
        ['ok', {'Authorization': '***'}, 'password=***']
    """
    return _default.value(value)


def scrub_text(text: str) -> str:
    """``text`` with secrets masked (URL passwords, sensitive ``key=value`` pairs, tokens...).

    Example:
        >>> scrub_text("connect to postgresql://app:s3cret@db/prod failed")
        'connect to postgresql://app:***@db/prod failed'
    """
    return _default.text(text)


def quote(value: Any, limit: int = 120) -> str:
    """How an error message shows a rejected value: scrubbed, as ``repr``, at most ``limit``
    characters (plus ``...``).

    Example:
        >>> quote("x" * 200, limit=10)
        "'xxxxxxxxx..."
    """
    return _default.quote(value, limit)
