"""The hash chain: record hashes, the genesis, the verifier, and export files.

``hash = H(prev_hash ‖ canonical_json(record without hash))`` where ``H`` is HMAC-SHA256 keyed
with the chain's key, else SHA-256, and the first ``prev_hash`` is
``H("onex-audit-genesis:" + chain_id)``. Hashes are lowercase hex.

``canonical_json`` is RFC 8785 (``serialization.canonical()``). The record's envelope holds only
strings, ``null`` and one integer (``seq``), so :func:`record_body` writes the canonical bytes of
the envelope directly (keys in their fixed sorted order, strings escaped as RFC 8785 says) and
splices in ``details``, which is stored as the canonical JSON ``serialization.canonical()``
produced when the record was written. The result is byte for byte what
``serialization.canonical(record)`` gives (``tests/test_audit_log.py`` checks it on random
records) at a fraction of the cost, which is what lets ``verify()`` check tens of thousands of
records per second.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from onex_compose.capabilities.audit_log._model import Anchor, VerifyReport

__all__ = [
    "COLUMNS",
    "EXPORT_FORMAT",
    "ChainVerifier",
    "Hasher",
    "record_body",
    "verify_export",
]

COLUMNS = ("seq", "chain_id", "id", "at", "actor", "actor_scheme", "action", "resource",
           "outcome", "reason", "node_id", "correlation_id", "trace_id", "details", "prev_hash",
           "hash")
"""The table's columns, in table order."""

EXPORT_FORMAT = "onex-audit-export"
GENESIS_PREFIX = b"onex-audit-genesis:"

try:  # orjson escapes strings exactly as RFC 8785 asks (and as the stdlib does below)
    import orjson as _orjson

    _enc_str: Callable[[str], bytes] = _orjson.dumps
except ImportError:  # pragma: no cover - exercised when orjson is absent
    def _enc_str(value: str) -> bytes:
        return json.dumps(value, ensure_ascii=False).encode()


def _enc(value: Any) -> bytes:
    if value is None:
        return b"null"
    if type(value) is str:
        return _enc_str(value)
    if type(value) is int:
        return str(value).encode()
    raise TypeError(f"audit envelope field of unexpected type {type(value).__name__}")


def _record_body_parts(row: Mapping[str, Any], seq: int | None = None) -> bytes:
    details = row["details"]
    return b"".join((
        b'{"action":', _enc(row["action"]),
        b',"actor":', _enc(row["actor"]),
        b',"actor_scheme":', _enc(row["actor_scheme"]),
        b',"at":', _enc(row["at"]),
        b',"chain_id":', _enc(row["chain_id"]),
        b',"correlation_id":', _enc(row["correlation_id"]),
        b',"details":', b"null" if details is None else details.encode(),
        b',"id":', _enc(row["id"]),
        b',"node_id":', _enc(row["node_id"]),
        b',"outcome":', _enc(row["outcome"]),
        b',"prev_hash":', _enc(row["prev_hash"]),
        b',"reason":', _enc(row["reason"]),
        b',"resource":', _enc(row["resource"]),
        b',"seq":', _enc(row["seq"] if seq is None else seq),
        b',"trace_id":', _enc(row["trace_id"]),
        b"}",
    ))


_ENVELOPE = tuple(c for c in COLUMNS if c not in ("details", "hash"))


def _record_body_orjson(row: Mapping[str, Any], seq: int | None = None) -> bytes:
    body = {k: row[k] for k in _ENVELOPE}
    details = row["details"]
    body["details"] = None if details is None else _fragment(details.encode())
    if seq is not None:
        body["seq"] = seq
    elif type(body["seq"]) is not int:
        raise TypeError(f"audit record seq must be an integer, got {body['seq']!r}")
    return _dumps(body, option=_SORT)


try:  # one C call: orjson sorts the (ASCII) keys and splices the stored details verbatim
    from orjson import OPT_SORT_KEYS as _SORT
    from orjson import Fragment as _fragment
    from orjson import dumps as _dumps

    _record_body = _record_body_orjson
except ImportError:  # pragma: no cover - older orjson or none
    _record_body = _record_body_parts


def record_body(row: Mapping[str, Any], seq: int | None = None) -> bytes:
    """The canonical JSON of a record without its ``hash`` (``details`` taken as stored).

    ``seq`` overrides the row's own (the verifier asks "would this row verify at seq N?").

    Example:
        >>> body = record_body({"seq": 1, "chain_id": "c", "id": "i", "at": "t", "actor": None,
        ...     "actor_scheme": None, "action": "a", "resource": None, "outcome": "success",
        ...     "reason": None, "node_id": None, "correlation_id": None, "trace_id": None,
        ...     "details": '{"k":1}', "prev_hash": "p"})
        >>> body[:60]
        b'{"action":"a","actor":null,"actor_scheme":null,"at":"t","cha'
    """
    return _record_body(row, seq)


class Hasher:
    """``H``: HMAC-SHA256 with ``key``, else SHA-256 (hex digests).

    Example:
        >>> Hasher(None).algorithm, Hasher(b"k").algorithm
        ('sha256', 'hmac-sha256')
        >>> len(Hasher(None).genesis("default"))
        64
    """

    __slots__ = ("_key", "algorithm")

    def __init__(self, key: bytes | None) -> None:
        self._key = key or None
        self.algorithm = "hmac-sha256" if self._key else "sha256"

    def __repr__(self) -> str:
        return f"Hasher({self.algorithm})"

    def __reduce__(self) -> Any:
        raise TypeError("a Hasher may hold the audit HMAC key and is not picklable")

    def digest(self, data: bytes) -> str:
        if self._key is None:
            return hashlib.sha256(data).hexdigest()
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def genesis(self, chain_id: str) -> str:
        """The first record's ``prev_hash``."""
        return self.digest(GENESIS_PREFIX + chain_id.encode())

    def record_hash(self, row: Mapping[str, Any], seq: int | None = None) -> str:
        """The hash a row must carry (at its own seq, or at ``seq``)."""
        prev = row["prev_hash"]
        return self.digest((prev if isinstance(prev, str) else "").encode()
                           + record_body(row, seq))


def _report(chain_id: str, checked: int, last: int, problem: str | None = None,
            seq: int | None = None, detail: str = "") -> VerifyReport:
    if problem is None:
        return VerifyReport(True, checked, None, None,
                            detail or f"{checked} records verified", chain_id, last)
    return VerifyReport(False, checked, seq, problem, detail, chain_id, last)


class ChainVerifier:
    """Checks records of one chain in seq order; on the first anomaly, classifies it.

    Feed rows (mappings with :data:`COLUMNS`) with :meth:`feed` while it returns ``True``; once
    it returns ``False`` feed the remaining rows to :meth:`scan_rest` (only counted), then call
    :meth:`report`. Classification at the first anomalous position ``e`` (expected previous hash
    ``p``):

    * a seq gap → ``deleted`` at ``e``;
    * at the chain's first record, a ``prev_hash`` no later row links to either →
      ``bad_genesis``;
    * a row linked to ``p`` whose content no longer gives its hash → ``inserted`` when another
      row also links to ``p`` (a forgery pushed in front of the real successor), else
      ``edited``;
    * a row not linked to ``p``: ``inserted`` at ``e - 1`` when it verifies at ``e - 1`` and
      links to the record before (a forged record that was hashed correctly sits at ``e - 1``);
      ``reordered`` when the real successor of ``e - 1`` turns up later; ``deleted`` when it is
      gone.

    Anchors are then checked: an anchor inside the checked range must match the record's hash
    (a mismatch means the chain was recomputed: ``edited``); an anchor past the last record
    means the tail was cut (``truncated``).
    """

    def __init__(self, chain_id: str, hasher: Hasher, *, start_seq: int, prev_hash: str | None,
                 at_genesis: bool, anchors: Iterable[Anchor] = ()) -> None:
        self.chain_id = chain_id
        self.hasher = hasher
        self.expected = start_seq
        self.prev = prev_hash
        self.at_genesis = at_genesis
        self.checked = 0
        self.last_seq = start_seq - 1
        self.last_row: Mapping[str, Any] | None = None
        self.pending: Mapping[str, Any] | None = None
        self._links = 0
        self._anchor_hash: dict[int, str] = {}
        for anchor in anchors:
            if anchor.chain_id == chain_id:
                self._anchor_hash[anchor.seq] = anchor.hash
        self._anchor_problem: tuple[int, str] | None = None

    def feed(self, row: Mapping[str, Any]) -> bool:
        """Check the next row; ``False`` once an anomaly is found (then :meth:`scan_rest`)."""
        seq = row["seq"]
        if seq == self.expected and (self.prev is None or row["prev_hash"] == self.prev) and (
                self.hasher.record_hash(row) == row["hash"]):
            anchored = self._anchor_hash.get(seq)
            if anchored is not None and anchored != row["hash"] and self._anchor_problem is None:
                self._anchor_problem = (seq, anchored)
            self.prev = row["hash"]
            self.expected = seq + 1
            self.last_seq = seq
            self.last_row = row
            self.checked += 1
            return True
        self.pending = row
        return False

    def scan_rest(self, row: Mapping[str, Any]) -> None:
        """Count a row after the anomaly that links to the expected previous hash."""
        if self.prev is not None and row["prev_hash"] == self.prev:
            self._links += 1

    def report(self, *, end_seq: int | None = None) -> VerifyReport:
        """The verdict once every row was fed."""
        cid = self.chain_id
        row = self.pending
        if row is not None:
            return self._classify(row)
        if self._anchor_problem is not None:
            seq, _ = self._anchor_problem
            return _report(cid, self.checked, self.last_seq, "edited", seq,
                           f"record {seq} does not match the anchor for seq {seq}: the chain was "
                           "recomputed after the anchor was taken (a rewritten table)")
        beyond = [s for s in self._anchor_hash if s > self.last_seq
                  and (end_seq is None or s <= end_seq)]
        if beyond:
            newest = max(beyond)
            return _report(cid, self.checked, self.last_seq, "truncated", self.last_seq + 1,
                           f"the chain ends at seq {self.last_seq} but the anchor for seq "
                           f"{newest} proves records up to {newest} existed: the tail was "
                           "truncated")
        return _report(cid, self.checked, self.last_seq)

    def _classify(self, row: Mapping[str, Any]) -> VerifyReport:
        cid, e, p = self.chain_id, self.expected, self.prev
        checked, last = self.checked, self.last_seq
        seq = row["seq"]
        if seq != e:
            gap = f"{e}" if seq == e + 1 else f"{e}..{seq - 1}"
            return _report(cid, checked, last, "deleted", e,
                           f"seq {gap} missing: the chain jumps from {e - 1} to {seq}")
        linked = p is None or row["prev_hash"] == p
        if self.at_genesis and self.last_row is None and not linked and self._links == 0:
            return _report(cid, checked, last, "bad_genesis", e,
                           f"record {e} does not start from the genesis of chain {cid!r} (the "
                           "chain was rebuilt, or verified with the wrong HMAC key)")
        if linked:
            if self._links:
                return _report(cid, checked, last, "inserted", e,
                               f"record {e} is a forgery: it and a later record both follow "
                               f"record {e - 1}")
            return _report(cid, checked, last, "edited", e,
                           f"record {e} was altered: its content no longer gives its hash")
        before = self.last_row
        if before is not None and row["prev_hash"] == before["prev_hash"] and (
                self.hasher.record_hash(row, e - 1) == row["hash"]):
            return _report(cid, max(0, checked - 1), last - 1, "inserted", e - 1,
                           f"record {e - 1} was inserted: record {e} is the original "
                           f"record {e - 1}, renumbered")
        if self._links:
            return _report(cid, checked, last, "reordered", e,
                           f"record {e} is out of place: the record that follows {e - 1} "
                           "appears later in the chain")
        return _report(cid, checked, last, "deleted", e,
                       f"record {e} does not follow record {e - 1}: the record that did was "
                       "removed (or record {0} was rewritten with its hash recomputed)"
                       .format(e - 1))


def verify_rows(rows: Iterable[Mapping[str, Any]], verifier: ChainVerifier,
                end_seq: int | None = None) -> VerifyReport:
    """Run ``verifier`` over ``rows`` (in seq order)."""
    it: Iterator[Mapping[str, Any]] = iter(rows)
    for row in it:
        if not verifier.feed(row):
            for rest in it:
                verifier.scan_rest(rest)
            break
    return verifier.report(end_seq=end_seq)


# -- export files ------------------------------------------------------------------------------


def export_header(chain_id: str, hasher: Hasher, start_seq: int, prev_hash: str,
                  exported_at: str) -> dict[str, Any]:
    return {"type": "header", "format": EXPORT_FORMAT, "version": 1, "chain_id": chain_id,
            "algorithm": hasher.algorithm, "start_seq": start_seq, "prev_hash": prev_hash,
            "exported_at": exported_at}


def export_line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _bad(chain_id: str, detail: str, seq: int | None = None, checked: int = 0,
         problem: str = "edited") -> VerifyReport:
    return VerifyReport(False, checked, seq, problem, detail, chain_id, 0)


def verify_export(data: bytes, key: bytes | None = None) -> VerifyReport:
    """Verify an export (``AuditLog.export``/``archive``) offline: the chain from the header's
    ``prev_hash``, the final anchor, and the digest over every line before the last.

    Raises:
        ValueError: the file was written with an HMAC key and ``key`` is missing (or the other
            way round): it cannot be checked.
    """
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) < 3:
        return _bad("?", "not an audit export: fewer than three lines (header, anchor, end)")
    try:
        parsed = [json.loads(line) for line in lines]
    except (ValueError, UnicodeDecodeError) as exc:
        return _bad("?", f"the export is not valid JSON lines ({type(exc).__name__}): it was "
                         "altered or truncated")
    header, end = parsed[0], parsed[-1]
    if not isinstance(header, dict) or header.get("type") != "header" or header.get(
            "format") != EXPORT_FORMAT or header.get("version") != 1:
        return _bad("?", f"the first line is not an {EXPORT_FORMAT} v1 header")
    chain_id = str(header.get("chain_id"))
    algorithm = header.get("algorithm")
    if algorithm not in ("sha256", "hmac-sha256"):
        return _bad(chain_id, f"unknown algorithm {algorithm!r} in the header")
    if algorithm == "hmac-sha256" and not key:
        raise ValueError("this export is HMAC-chained: give the key (--hmac-key-env VAR names "
                         "the environment variable holding it)")
    if algorithm == "sha256" and key:
        raise ValueError("this export is a plain SHA-256 chain: verify it without an HMAC key")
    hasher = Hasher(key)
    if not isinstance(end, dict) or end.get("type") != "end":
        return _bad(chain_id, "the last line is not the export's end line: the file was cut")
    body = b"".join(line + b"\n" for line in lines[:-1])
    if end.get("digest") != hasher.digest(body):
        return _bad(chain_id, "the export's digest does not match its content: a byte was "
                              "changed")
    start, prev = header.get("start_seq"), header.get("prev_hash")
    if not isinstance(start, int) or not isinstance(prev, str):
        return _bad(chain_id, "the header lacks start_seq/prev_hash")
    if start == 1 and prev != hasher.genesis(chain_id):
        return _bad(chain_id, f"the export does not start from the genesis of {chain_id!r}", 1,
                    problem="bad_genesis")
    records = parsed[1:-2]
    anchor_obj = parsed[-2]
    if not isinstance(anchor_obj, dict) or anchor_obj.get("type") != "anchor":
        return _bad(chain_id, "the line before the end is not the final anchor")
    try:
        anchor = Anchor.from_dict(anchor_obj)
    except ValueError as exc:
        return _bad(chain_id, f"bad final anchor: {exc}")
    if end.get("records") != len(records):
        return _bad(chain_id, f"the end line counts {end.get('records')} records, the file "
                              f"holds {len(records)}")
    rows: list[dict[str, Any]] = []
    for n, rec in enumerate(records, start=2):
        if not isinstance(rec, dict) or rec.get("type") != "record" or any(
                c not in rec for c in COLUMNS):
            return _bad(chain_id, f"line {n} is not a complete record")
        row = {c: rec[c] for c in COLUMNS}
        if row["details"] is not None:
            row["details"] = rec["details_json"] if isinstance(rec.get("details_json"), str) \
                else None
            if row["details"] is None:
                return _bad(chain_id, f"line {n} lacks details_json")
        rows.append(row)
    verifier = ChainVerifier(chain_id, hasher, start_seq=start, prev_hash=prev,
                             at_genesis=start == 1, anchors=[anchor])
    report = verify_rows(rows, verifier)
    if report.ok and anchor.seq != verifier.last_seq:
        return _bad(chain_id, f"the final anchor names seq {anchor.seq}, the last record is "
                              f"{verifier.last_seq}", verifier.last_seq + 1, verifier.checked,
                    problem="truncated")
    return report


def cli_verify(path: str, hmac_key_env: str | None, out: Any, err: Any,
               as_json: bool = False) -> int:
    """``onex audit verify PATH [--hmac-key-env VAR] [--json]``: 0 verified, 1 tampered or
    unreadable, 2 a usage problem (a missing key variable)."""
    import os

    key: bytes | None = None
    if hmac_key_env:
        value = os.environ.get(hmac_key_env)
        if not value:
            print(f"onex audit verify: error: the environment variable {hmac_key_env} is not "
                  "set (it must hold the chain's HMAC key)", file=err)
            return 2
        key = value.encode()
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        print(f"onex audit verify: error: cannot read {path!r}: {exc.strerror or exc}", file=err)
        return 1
    try:
        report = verify_export(data, key)
    except ValueError as exc:
        print(f"onex audit verify: error: {exc}", file=err)
        return 2
    if as_json:
        print(json.dumps(report.to_dict()), file=out)
    elif report.ok:
        print(f"ok: chain {report.chain_id!r}, {report.checked} records verified (last seq "
              f"{report.last_seq})", file=out)
    else:
        where = f" at seq {report.first_bad_seq}" if report.first_bad_seq is not None else ""
        print(f"TAMPERED: {report.problem}{where}: {report.detail}", file=out)
    return 0 if report.ok else 1
