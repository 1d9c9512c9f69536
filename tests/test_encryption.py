"""The encryption capability: tokens, tampering, rotation, envelopes, Fernet interop, fields,
key handling and the leak test (no key bytes in logs, reprs, explain, metrics, errors, pickles)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from onex_compose import NodeEffect, compose, explain
from onex_compose.capabilities import encryption as enc_module
from onex_compose.capabilities.encryption import (
    DecryptionError,
    Encryption,
    EncryptionConfig,
    Envelope,
    KeyExhaustedError,
    MixinEncryption,
)
from onex_compose.exceptions import ConfigurationError, OnexError

CONTRACT = Path(enc_module.__file__).parent / "mixin_encryption.yaml"
MESSAGE = ("cannot decrypt: the token was altered, encrypted with another key or context, or is "
           "malformed")


def _key(key_id: str) -> tuple[str, bytes]:
    entry = Encryption.generate_key(key_id)
    return entry, base64.urlsafe_b64decode(entry.split(":", 1)[1])


K1, K1_RAW = _key("k1")
K2, K2_RAW = _key("k2")


def crypto(*keys: str, **config: Any) -> Encryption:
    return Encryption({"keys": list(keys), **config}, environ={})


AES = crypto(K1)
CHACHA = crypto(K1, algorithm="chacha20-poly1305")


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    from onex_compose.capabilities._log import logger

    lines: list[str] = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    try:
        yield lines
    finally:
        logger.remove(sink)
        logger.disable("onex_compose")


# -- contract and composition --------------------------------------------------------------------


def test_config_section_mirrors_the_model_field_for_field() -> None:
    section = yaml.safe_load(CONTRACT.read_text("utf-8"))["encryption_config"]
    assert section == EncryptionConfig().model_dump()
    assert list(section) == list(EncryptionConfig.model_fields)


def test_every_metric_the_module_records_is_declared_in_its_contract() -> None:
    source = Path(enc_module.__file__).read_text("utf-8")
    recorded = set(re.findall(r'(?:increment|bind_counter)\(\s*"([a-z_]+)"', source))
    contract = yaml.safe_load(CONTRACT.read_text("utf-8"))
    declared = {m["name"] for m in contract["metrics"]}
    assert recorded == declared == {"encryption_operations_total", "decryption_failures_total"}
    assert contract["composition"]["rank"] == 160 and "guard_rank" not in contract["composition"]
    assert {a["name"] for a in contract["actions"]} == {
        "encrypt", "decrypt", "rotate", "envelope_encrypt", "rewrap"}


def test_composes_with_metrics_and_exposes_crypto() -> None:
    cls = compose(NodeEffect, ["encryption"])
    assert issubclass(cls, MixinEncryption)
    assert cls.__composition__.capabilities == ("metrics", "encryption")
    node = cls(capability_config={"encryption": {"keys": [K2, K1]}})
    assert node.crypto.decrypt(node.crypto.encrypt(b"x")) == b"x"
    assert "metrics: required by encryption" in str(explain(cls))


def test_the_mixin_follows_the_rules() -> None:
    assert MixinEncryption.__slots__ == ()
    assert "__init__" not in vars(MixinEncryption)
    node = compose(NodeEffect, ["encryption"])(
        capability_config={"encryption": {"keys": [K1]}})
    first = node.crypto
    node.setup_encryption({"keys": [K2, K1]})  # reconfigures: a new facility, new primary
    assert node.crypto is not first and node.crypto.primary_key_id == "k2"


def test_errors_subclass_onex_error_and_a_builtin_and_are_not_retried() -> None:
    assert issubclass(DecryptionError, OnexError) and issubclass(DecryptionError, ValueError)
    assert issubclass(KeyExhaustedError, OnexError) and issubclass(KeyExhaustedError,
                                                                    RuntimeError)
    for cls in (DecryptionError, KeyExhaustedError):
        assert cls.onex_retriable is False and cls.onex_breaker_neutral is True
    err = pickle.loads(pickle.dumps(DecryptionError("unknown_key", key_id="k9")))
    assert (err.reason, err.key_id, str(err)) == ("unknown_key", "k9", MESSAGE)
    err2 = pickle.loads(pickle.dumps(KeyExhaustedError("k1", 5)))
    assert (err2.key_id, err2.limit) == ("k1", 5)


# -- round trip and the token format -----------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=2048), aad=st.binary(max_size=64),
       which=st.sampled_from([AES, CHACHA]))
def test_round_trip_any_bytes_any_aad(data: bytes, aad: bytes, which: Encryption) -> None:
    token = which.encrypt(data, aad=aad)
    assert which.decrypt(token, aad=aad) == data


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300), aad=st.binary(max_size=32))
def test_text_round_trip(text: str, aad: bytes) -> None:
    token = AES.encrypt_str(text, aad=aad)
    assert token.startswith("onex:v1:") and re.fullmatch(r"onex:v1:[A-Za-z0-9_-]+", token)
    assert AES.decrypt_str(token, aad=aad) == text
    assert AES.decrypt(token, aad=aad) == text.encode()  # decrypt takes either form


@pytest.mark.parametrize(("which", "alg", "cls"), [(AES, 1, AESGCM),
                                                   (CHACHA, 2, ChaCha20Poly1305)])
def test_token_layout_is_exactly_the_documented_one(which: Encryption, alg: int, cls: Any
                                                    ) -> None:
    token = which.encrypt(b"payload", aad=b"ctx")
    assert token[0] == 0x01 and token[1] == 2 and token[2:4] == b"k1" and token[4] == alg
    nonce, body = token[5:17], token[17:]
    assert len(body) == len(b"payload") + 16
    # the header is authenticated together with the caller's AAD
    assert cls(K1_RAW).decrypt(nonce, body, token[:5] + b"ctx") == b"payload"
    text = which.encrypt_str("x")
    raw = base64.urlsafe_b64decode(text[len("onex:v1:"):] + "==")
    assert raw[:5] == bytes((1, 2)) + b"k1" + bytes((alg,))


def test_nonces_are_fresh_and_either_algorithm_decrypts_under_any_setting() -> None:
    a, b = AES.encrypt(b"same"), AES.encrypt(b"same")
    assert a != b and a[5:17] != b[5:17]
    assert AES.decrypt(CHACHA.encrypt(b"c")) == b"c"
    assert CHACHA.decrypt(AES.encrypt(b"a")) == b"a"
    assert crypto(K1, algorithm="fernet").decrypt(AES.encrypt(b"f")) == b"f"


# -- tampering -----------------------------------------------------------------------------------


TOKEN = AES.encrypt(b"attack at dawn", aad=b"orders:42:card")
CHACHA_TOKEN = CHACHA.encrypt(b"attack at dawn", aad=b"orders:42:card")
TEXT_TOKEN = AES.encrypt_str("attack at dawn", aad=b"orders:42:card")


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, len(TOKEN) * 8 - 1), chacha=st.booleans())
def test_any_single_bit_flip_raises_decryption_error(position: int, chacha: bool) -> None:
    flipped = bytearray(CHACHA_TOKEN if chacha else TOKEN)
    flipped[position // 8] ^= 1 << (position % 8)
    with pytest.raises(DecryptionError) as info:
        AES.decrypt(bytes(flipped), aad=b"orders:42:card")
    assert str(info.value) == MESSAGE


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, len(TEXT_TOKEN) * 8 - 1))
def test_any_single_bit_flip_of_the_text_form_raises_decryption_error(position: int) -> None:
    flipped = bytearray(TEXT_TOKEN.encode("ascii"))
    flipped[position // 8] ^= 1 << (position % 8)
    text = flipped.decode("latin-1")
    with pytest.raises(DecryptionError):
        AES.decrypt_str(text, aad=b"orders:42:card")


def test_wrong_or_missing_aad_is_refused() -> None:
    for aad in (b"orders:43:card", b"", b"orders:42:card\x00"):
        with pytest.raises(DecryptionError) as info:
            AES.decrypt(TOKEN, aad=aad)
        assert info.value.reason == "authentication_failed"
    assert AES.decrypt(TOKEN, aad=b"orders:42:card") == b"attack at dawn"


@pytest.mark.parametrize(("token", "reason"), [
    (b"", "malformed"),
    (b"\x01", "malformed"),
    (b"\x01\x02k1\x01" + b"\x00" * 27, "malformed"),  # one byte short of nonce + tag
    (b"\x01\x02k1\x07" + b"\x00" * 28, "malformed"),  # unknown algorithm byte
    (b"\x02\x02k1\x01" + b"\x00" * 40, "unsupported_version"),
    ("onex:v2:AQJrMQE", "unsupported_version"),
    ("onex:v1:not base64!", "malformed"),
    ("garbage", "malformed"),
    ("gAAAAAB" + "A" * 60, "malformed"),  # a Fernet token while not configured for fernet
    (b"\x01\x02k9\x01" + b"\x00" * 28, "unknown_key"),
])
def test_every_cause_has_one_message_and_a_reason(token: Any, reason: str) -> None:
    with pytest.raises(DecryptionError) as info:
        AES.decrypt(token)
    assert info.value.reason == reason
    assert str(info.value) == MESSAGE


def test_a_token_is_bytes_or_text() -> None:
    with pytest.raises(TypeError, match="bytes or str"):
        AES.decrypt(12345)  # type: ignore[arg-type]


# -- rotation ------------------------------------------------------------------------------------


def test_rotation_from_k1_to_k2() -> None:
    old = crypto(K1).encrypt(b"secret", aad=b"a")
    ring = crypto(K2, K1)
    assert ring.decrypt(old, aad=b"a") == b"secret"
    assert ring.needs_rotation(old) is True
    new = ring.rotate(old, aad=b"a")
    assert new != old and new[2:4] == b"k2"
    assert ring.needs_rotation(new) is False
    assert crypto(K2).decrypt(new, aad=b"a") == b"secret"
    assert ring.rotate(new, aad=b"a") is new  # already under the primary: the same token
    # text tokens rotate to text tokens
    told = crypto(K1).encrypt_str("t")
    tnew = ring.rotate(told)
    assert isinstance(tnew, str) and tnew.startswith("onex:v1:")
    assert crypto(K2).decrypt_str(tnew) == "t"


def test_a_token_under_a_removed_key_is_unknown_key_naming_it() -> None:
    old = crypto(K1).encrypt(b"secret")
    with pytest.raises(DecryptionError) as info:
        crypto(K2).decrypt(old)
    assert info.value.reason == "unknown_key" and info.value.key_id == "k1"
    assert str(info.value) == MESSAGE
    with pytest.raises(DecryptionError, match="cannot decrypt"):
        crypto(K2).rotate(old)


def test_rotate_needs_the_right_aad() -> None:
    old = crypto(K1).encrypt(b"secret", aad=b"a")
    with pytest.raises(DecryptionError):
        crypto(K2, K1).rotate(old, aad=b"b")


# -- envelopes -----------------------------------------------------------------------------------


def test_envelope_round_trip_and_rewrap_leaves_the_data_ciphertext_identical() -> None:
    env = crypto(K1).envelope_encrypt(b"big document" * 100, aad=b"doc:7")
    assert isinstance(env, Envelope) and env.kek_id == "k1" and len(env.nonce) == 12
    ring = crypto(K2, K1)
    assert ring.envelope_decrypt(env, aad=b"doc:7") == b"big document" * 100
    new = ring.rewrap(env)
    assert new.kek_id == "k2" and new.wrapped_dek != env.wrapped_dek
    assert new.ciphertext == env.ciphertext and new.nonce == env.nonce  # data untouched
    assert crypto(K2).envelope_decrypt(new, aad=b"doc:7") == b"big document" * 100
    assert ring.rewrap(new) is new
    with pytest.raises(DecryptionError) as info:
        crypto(K2).envelope_decrypt(env, aad=b"doc:7")
    assert info.value.reason == "unknown_key" and info.value.key_id == "k1"


def test_envelope_tampering_and_wrong_aad_are_refused() -> None:
    env = AES.envelope_encrypt(b"data", aad=b"ctx")
    with pytest.raises(DecryptionError):
        AES.envelope_decrypt(env, aad=b"other")
    bad = Envelope(env.kek_id, env.wrapped_dek, env.nonce,
                   bytes([env.ciphertext[0] ^ 1]) + env.ciphertext[1:])
    with pytest.raises(DecryptionError):
        AES.envelope_decrypt(bad, aad=b"ctx")
    # a data key token is not a data token: its AAD is bound to the envelope
    with pytest.raises(DecryptionError):
        AES.decrypt(env.wrapped_dek)


def test_envelope_bytes_round_trip_and_repr_hides_the_contents() -> None:
    env = AES.envelope_encrypt(b"data")
    back = Envelope.from_bytes(env.to_bytes())
    assert back == env and AES.envelope_decrypt(back) == b"data"
    assert "wrapped_dek=<" in repr(env) and env.ciphertext.hex() not in repr(env)
    for broken in (b"", b"\x02\x00\x00", env.to_bytes()[:20]):
        with pytest.raises(DecryptionError):
            Envelope.from_bytes(broken)


# -- fernet --------------------------------------------------------------------------------------


def _fernet_key(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw)


def test_fernet_tokens_decrypt_with_multifernet_semantics() -> None:
    f1, f2 = Fernet(_fernet_key(K1_RAW)), Fernet(_fernet_key(K2_RAW))
    ring = crypto(K2, K1, algorithm="fernet")
    assert ring.decrypt(f1.encrypt(b"old")) == b"old"  # any key decrypts
    assert ring.decrypt(f2.encrypt(b"new").decode()) == b"new"  # text form too
    ours = ring.encrypt(b"ours")
    assert f2.decrypt(ours) == b"ours"  # the primary encrypts, in Fernet's own format
    assert MultiFernet([f2, f1]).decrypt(ring.encrypt_str("s").encode()) == b"s"
    with pytest.raises(DecryptionError) as info:
        crypto(K2, algorithm="fernet").decrypt(f1.encrypt(b"x"))
    assert info.value.reason == "authentication_failed"
    tampered = bytearray(f1.encrypt(b"x"))
    tampered[30] = ord("A") if tampered[30] != ord("A") else ord("B")
    with pytest.raises(DecryptionError):
        ring.decrypt(bytes(tampered))


def test_fernet_decryption_is_counted_under_the_key_that_opened_it() -> None:
    node = compose(NodeEffect, ["encryption"])(
        capability_config={"encryption": {"keys": [K2, K1], "algorithm": "fernet"}})
    node.crypto.decrypt(Fernet(_fernet_key(K1_RAW)).encrypt(b"x"))
    assert ('encryption_operations_total{key_id="k1",op="decrypt"} 1.0'
            in node.metrics.exposition())


def test_fernet_rotation_matches_multifernet_rotate() -> None:
    f1, f2 = Fernet(_fernet_key(K1_RAW)), Fernet(_fernet_key(K2_RAW))
    old = f1.encrypt_at_time(b"payload", 1_000_000)
    ring = crypto(K2, K1, algorithm="fernet")
    assert ring.needs_rotation(old) is True
    new = ring.rotate(old)
    assert f2.extract_timestamp(new) == 1_000_000 == f2.extract_timestamp(
        MultiFernet([f2, f1]).rotate(old))
    assert f2.decrypt(new, ttl=None) == b"payload"
    assert ring.needs_rotation(new) is False and ring.rotate(new) is new


def test_fernet_refuses_aad_instead_of_ignoring_it() -> None:
    ring = crypto(K1, algorithm="fernet")
    with pytest.raises(ValueError, match="cannot bind associated data"):
        ring.encrypt(b"x", aad=b"ctx")
    with pytest.raises(ValueError, match="cannot bind associated data"):
        ring.decrypt(ring.encrypt(b"x"), aad=b"ctx")
    env = ring.envelope_encrypt(b"data", aad=b"ctx")  # the data key's AEAD still binds it
    assert ring.envelope_decrypt(env, aad=b"ctx") == b"data"
    assert crypto(K2, K1, algorithm="fernet").rewrap(env).ciphertext == env.ciphertext


# -- max_uses_per_key ------------------------------------------------------------------------------


def test_key_exhausted_after_exactly_max_uses() -> None:
    c = crypto(K1, max_uses_per_key=3)
    tokens = [c.encrypt(b"x") for _ in range(3)]
    with pytest.raises(KeyExhaustedError, match="Rotate") as info:
        c.encrypt(b"x")
    assert info.value.key_id == "k1" and info.value.limit == 3
    assert K1.split(":")[1] not in str(info.value)
    assert all(c.decrypt(t) == b"x" for t in tokens)  # decrypting is not a use
    # a new primary starts a fresh count
    c2 = crypto(K2, K1, max_uses_per_key=3)
    assert c2.rotate(tokens[0])[2:4] == b"k2"


def test_reconfiguring_keeps_the_use_count_of_the_same_key() -> None:
    node = compose(NodeEffect, ["encryption"])(
        capability_config={"encryption": {"keys": [K1], "max_uses_per_key": 3}})
    node.crypto.encrypt(b"1")
    node.crypto.encrypt(b"2")
    node.setup_encryption({"keys": [K1, K2], "max_uses_per_key": 3})
    node.crypto.encrypt(b"3")
    with pytest.raises(KeyExhaustedError):
        node.crypto.encrypt(b"4")
    node.setup_encryption({"keys": [K2, K1], "max_uses_per_key": 3})  # rotated: k2 is fresh
    assert [node.crypto.encrypt(b"x")[2:4] for _ in range(3)] == [b"k2"] * 3


# -- key material --------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "problem"), [
    ("k1:" + base64.urlsafe_b64encode(b"s" * 16).decode(), "16 bytes, expected 32"),
    ("k1:" + "not*base64*at*all*" * 3, "not base64url"),
    ("k1" + "A" * 43, "no ':' found"),
    ("bad id:" + base64.urlsafe_b64encode(b"s" * 32).decode(), "key id must be"),
])
def test_key_material_problems_never_echo_the_key(entry: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(problem)) as info:
        crypto(entry)
    material = entry.split(":", 1)[-1]
    assert material not in str(info.value) and entry not in str(info.value)


def test_duplicate_key_ids_are_refused() -> None:
    other = "k1:" + K2.split(":", 1)[1]
    with pytest.raises(ConfigurationError, match="duplicate key id 'k1'") as info:
        crypto(K1, other)
    assert K1.split(":", 1)[1] not in str(info.value)
    assert K2.split(":", 1)[1] not in str(info.value)


def test_no_key_fails_setup_with_the_fix() -> None:
    with pytest.raises(ConfigurationError, match=re.escape(
            "no encryption key: set keys or ONEX_ENCRYPTION_KEYS; `onex keygen` prints one")):
        Encryption({}, environ={})
    cls = compose(NodeEffect, ["encryption"])
    with pytest.raises(ConfigurationError, match="no encryption key"):
        cls(capability_config={"encryption": {"keys_env": "ONEX_TEST_NO_SUCH_VARIABLE"}})


def test_ephemeral_key_works_and_warns_once(log_lines: list[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enc_module, "_ephemeral_warned", False)
    a = Encryption({"allow_ephemeral_key": True}, environ={})
    b = Encryption({"allow_ephemeral_key": True}, environ={})
    assert a.ephemeral and a.primary_key_id.startswith("ephemeral-")
    assert a.decrypt(a.encrypt(b"x")) == b"x"
    with pytest.raises(DecryptionError):
        b.decrypt(a.encrypt(b"x"))  # another random key
    assert sum("random in-process key" in line for line in log_lines) == 1


def test_keys_env_is_read_when_keys_is_empty() -> None:
    c = Encryption({}, environ={"ONEX_ENCRYPTION_KEYS": f"{K2}, {K1}"})
    assert c.key_ids == ["k2", "k1"] and c.primary_key_id == "k2"
    c = Encryption({"keys_env": "MY_KEYS"}, environ={"MY_KEYS": K1})
    assert c.key_ids == ["k1"]
    with pytest.raises(ConfigurationError, match=r"MY_KEYS\[0\]"):
        Encryption({"keys_env": "MY_KEYS"}, environ={"MY_KEYS": "k1:short"})
    # keys in config win over the environment
    assert Encryption({"keys": [K1]}, environ={"ONEX_ENCRYPTION_KEYS": K2}).key_ids == ["k1"]


def test_generate_key_and_repr() -> None:
    entry = Encryption.generate_key("prod-2026")
    kid, material = entry.split(":", 1)
    assert kid == "prod-2026" and len(base64.urlsafe_b64decode(material)) == 32
    Fernet(material.encode())  # also a valid Fernet key
    assert Encryption.generate_key() != Encryption.generate_key()
    with pytest.raises(ValueError, match="key id"):
        Encryption.generate_key("no:colons")
    ring = crypto(K2, K1)
    assert repr(ring) == "<Encryption aes-256-gcm keys=['k2' (primary), 'k1']>"
    assert ring.key_ids == ["k2", "k1"] and ring.primary_key_id == "k2"
    with pytest.raises(TypeError, match="does not pickle"):
        pickle.dumps(ring)


def test_cli_keygen_prints_keys_the_capability_accepts() -> None:
    from onex_compose._cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["keygen", "--id", "k7"]) == 0
    entry = out.getvalue().strip()
    assert entry.startswith("k7:") and crypto(entry).primary_key_id == "k7"
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["keygen", "--id", "r", "--count", "2"]) == 0
    ring = Encryption({}, environ={"ONEX_ENCRYPTION_KEYS": out.getvalue().strip()})
    assert ring.key_ids == ["r-1", "r-2"]
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["keygen"]) == 0
    assert re.fullmatch(r"k\d{8}T\d{6}:[A-Za-z0-9_-]{43}=\n", out.getvalue())
    assert main(["keygen", "--id", "a:b"]) == 2
    assert main(["keygen", "--count", "0"]) == 2


# -- Pydantic fields -------------------------------------------------------------------------------


class Payment(BaseModel):
    order: int
    card_number: str
    cvv: int
    note: str | None = None


def test_encrypt_fields_round_trip_with_the_default_aad() -> None:
    p = Payment(order=42, card_number="4111111111111111", cvv=123)
    enc = AES.encrypt_fields(p, ["card_number", "cvv", "note"])
    assert enc.order == 42 and enc.card_number.startswith("onex:v1:")
    assert "4111" not in enc.model_dump_json(warnings=False)
    # the default AAD is "<Model>.<field>"
    assert AES.decrypt_str(enc.card_number, aad=b"Payment.card_number") == '"4111111111111111"'
    assert AES.decrypt_fields(enc, ["card_number", "cvv", "note"]) == p
    # a token moved to another field does not decrypt
    moved = enc.model_copy(update={"note": enc.card_number})
    with pytest.raises(DecryptionError):
        AES.decrypt_fields(moved, ["note"])
    with pytest.raises(ValueError, match="has no field 'pan'"):
        AES.encrypt_fields(p, ["pan"])
    with pytest.raises(DecryptionError):
        AES.decrypt_fields(p, ["order"])  # not a token


def test_encrypt_fields_with_an_explicit_aad() -> None:
    p = Payment(order=1, card_number="x", cvv=1)
    enc = CHACHA.encrypt_fields(p, ["card_number"], aad=b"tenant:7")
    assert CHACHA.decrypt_fields(enc, ["card_number"], aad=b"tenant:7") == p
    with pytest.raises(DecryptionError):
        CHACHA.decrypt_fields(enc, ["card_number"])


# -- metrics ---------------------------------------------------------------------------------------


def test_operations_and_failures_are_counted() -> None:
    node = compose(NodeEffect, ["encryption"])(
        capability_config={"encryption": {"keys": [K2, K1]}})
    c = node.crypto
    old = crypto(K1).encrypt(b"o")
    c.decrypt(c.encrypt(b"x"))
    c.rotate(old)
    c.rewrap(crypto(K1).envelope_encrypt(b"e"))
    for bad in (b"junk", crypto(K1).encrypt(b"x", aad=b"a"), crypto("k3:" + K1.split(":")[1])
                .encrypt(b"x")):
        with pytest.raises(DecryptionError):
            c.decrypt(bad)
    counters = node.metrics.snapshot()["counters"]
    text = json.dumps({str(k): v for k, v in counters.items()})
    exposition = node.metrics.exposition()
    assert 'encryption_operations_total{key_id="k2",op="encrypt"} 1.0' in exposition
    assert 'encryption_operations_total{key_id="k2",op="decrypt"} 1.0' in exposition
    assert 'encryption_operations_total{key_id="k2",op="rotate"} 1.0' in exposition
    assert 'encryption_operations_total{key_id="k2",op="rewrap"} 1.0' in exposition
    for reason in ("malformed", "authentication_failed", "unknown_key"):
        assert f'decryption_failures_total{{reason="{reason}"}} 1.0' in exposition
    assert text


def test_counts_survive_a_metrics_reset_and_follow_a_new_metrics_facility() -> None:
    from onex_compose.capabilities.metrics import Metrics

    node = compose(NodeEffect, ["encryption"])(
        capability_config={"encryption": {"keys": [K1]}})
    c = node.crypto
    key = 'encryption_operations_total{key_id="k1",op="encrypt"}'
    c.decrypt(c.encrypt(b"x"))  # the fast paths' bound counters are made
    node.metrics.reset()
    c.encrypt(b"y")
    assert node.metrics.snapshot()["counters"][key] == 1
    other = Metrics()
    c.metrics = other
    c.decrypt(c.encrypt(b"z"))
    with pytest.raises(DecryptionError):
        c.decrypt(b"junk")
    assert node.metrics.snapshot()["counters"][key] == 1
    counters = other.snapshot()["counters"]
    assert counters[key] == 1
    assert counters['encryption_operations_total{key_id="k1",op="decrypt"}'] == 1
    assert counters['decryption_failures_total{reason="malformed"}'] == 1
    c.metrics = None
    assert c.decrypt(c.encrypt(b"w")) == b"w"
    assert other.snapshot()["counters"][key] == 1


# -- leak test -----------------------------------------------------------------------------------


def _forms(raw: bytes, entry: str) -> list[str]:
    material = entry.split(":", 1)[1]
    return [material, material.rstrip("="), base64.b64encode(raw).decode(), raw.hex(),
            repr(raw)[2:-1][:20]]


def test_no_key_bytes_anywhere(log_lines: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    cls = compose(NodeEffect, ["encryption"])
    node = cls(capability_config={"encryption": {"keys": [K2, K1]}})
    c = node.crypto
    texts: list[str] = []
    old = crypto(K1).encrypt(b"x", aad=b"a")
    c.rotate(old, aad=b"a")
    env = c.envelope_encrypt(b"data")
    c.rewrap(env)
    c.encrypt_fields(Payment(order=1, card_number="4111111111111111", cvv=1), ["card_number"])
    for attempt in (lambda: c.decrypt(b"junk"), lambda: c.decrypt(old, aad=b"b"),
                    lambda: crypto(K2).decrypt(old),
                    lambda: crypto(K1[:-5]), lambda: crypto(K1, K1),
                    lambda: cls(capability_config={"encryption": {"keys": [K1[:-8]]}}),
                    lambda: EncryptionConfig(keys=K1)):  # type: ignore[arg-type]
        with pytest.raises(Exception) as info:  # noqa: PT011 - each kind of failure
            attempt()
        texts += [str(info.value), repr(info.value)]
    limited = crypto(K1, max_uses_per_key=1)
    limited.encrypt(b"1")
    with pytest.raises(KeyExhaustedError) as exhausted:
        limited.encrypt(b"2")
    texts += [str(exhausted.value), repr(c), repr(env), str(c.key_ids), str(explain(cls)),
              str(explain(node)), node.metrics.exposition(), json.dumps(
                  node.metrics.snapshot(), default=str), repr(EncryptionConfig(keys=[K1])),
              *log_lines]
    assert any("encryption: aes-256-gcm with keys ['k2' (primary), 'k1']" in line
               for line in log_lines), log_lines
    blob = "\n".join(texts)
    for raw, entry in ((K1_RAW, K1), (K2_RAW, K2)):
        for form in _forms(raw, entry):
            assert form not in blob, form


def test_a_node_configured_through_keys_env_pickles_without_key_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEX_ENCRYPTION_KEYS", f"{K2},{K1}")
    node = compose(NodeEffect, ["encryption"])(capability_config={"encryption": {}})
    token = node.crypto.encrypt(b"kept", aad=b"a")
    blob = pickle.dumps(node)
    for raw, entry in ((K1_RAW, K1), (K2_RAW, K2)):
        assert raw not in blob
        for form in _forms(raw, entry):
            assert form.encode() not in blob
    back = pickle.loads(blob)
    assert back.crypto.key_ids == ["k2", "k1"]
    assert back.crypto.decrypt(token, aad=b"a") == b"kept"


# -- lazy import -----------------------------------------------------------------------------------


def test_composing_and_setting_up_does_not_import_cryptography() -> None:
    code = textwrap.dedent(f"""
        import sys
        from onex_compose import NodeEffect, compose
        cls = compose(NodeEffect, ["encryption"])
        node = cls(capability_config={{"encryption": {{"keys": ["{K1}"]}}}})
        assert repr(node.crypto)
        assert not [m for m in sys.modules if m.startswith("cryptography")], "imported early"
        assert node.crypto.decrypt(node.crypto.encrypt(b"x")) == b"x"
        assert "cryptography" in sys.modules
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "ONEX_ENCRYPTION_KEYS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=env, cwd=str(Path(__file__).parent), check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_missing_cryptography_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cryptography" else real(name, *a))
    with pytest.raises(ConfigurationError, match=re.escape("pip install 'onex-compose[crypto]'")):
        compose(NodeEffect, ["encryption"])(capability_config={"encryption": {"keys": [K1]}})


def test_the_use_counter_is_exact_across_threads() -> None:
    import threading

    c = crypto(K1, max_uses_per_key=200)
    errors: list[BaseException] = []

    def work() -> None:
        for _ in range(50):
            try:
                c.encrypt(b"x")
            except KeyExhaustedError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(errors) == 50  # 250 attempts, exactly 200 admitted
