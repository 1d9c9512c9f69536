"""Fail secure, all at once: a node whose capabilities lack keys raises one ConfigurationError at
setup naming every missing key and how to provide each (configs report ``missing_keys()``
before any setup runs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

import onex_compose.capabilities
from onex_compose import NodeCompute, Registry, coerce_config, compose, facility
from onex_compose.capabilities.encryption import Encryption
from onex_compose.exceptions import ConfigurationError

setups: list[str] = []


class VaultKeyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: SecretStr | None = None

    def missing_keys(self) -> list[str]:
        return [] if self.key else ["no vault key: set vault_key.key or VAULT_KEY"]


class SigningKeyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    secret: SecretStr | None = None

    def missing_keys(self) -> list[str]:
        return [] if self.secret else ["no signing secret: set signing_key.secret"]


class MixinVaultKey:
    __slots__ = ()

    def setup_vault_key(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = coerce_config(VaultKeyConfig, config, "vault_key")
        if cfg.key is None:
            raise ConfigurationError("vault_key: no key")  # what setup alone would say
        setups.append("vault_key")
        self.vault = cfg  # type: ignore[attr-defined]

    @facility
    def vault(self) -> Any:
        return None


class MixinSigningKey:
    __slots__ = ()

    def setup_signing_key(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = coerce_config(SigningKeyConfig, config, "signing_key")
        if cfg.secret is None:
            raise ConfigurationError("signing_key: no secret")
        setups.append("signing_key")
        self.signer = cfg  # type: ignore[attr-defined]

    @facility
    def signer(self) -> Any:
        return None


REG = Registry(name="missing-keys")
REG.load_manifest(onex_compose.capabilities.MANIFEST)
REG.register(MixinVaultKey, name="vault_key", config=VaultKeyConfig)
REG.register(MixinSigningKey, name="signing_key", config=SigningKeyConfig)
Node = compose(NodeCompute, ["vault_key", "signing_key"], registry=REG)


@pytest.mark.parametrize("config", [None, {"vault_key": {}}], ids=["defaults", "configured"])
def test_every_missing_key_is_named_in_one_error_before_any_setup(config: Any) -> None:
    setups.clear()
    for _ in range(2):  # the second default instance too (no fast path skips the check)
        with pytest.raises(ConfigurationError) as info:
            Node(capability_config=config)
        err = info.value
        assert str(err).startswith(f"{Node.__name__} cannot be set up: 2 keys are missing")
        assert sorted(err.problems) == [
            "signing_key: no signing secret: set signing_key.secret",
            "vault_key: no vault key: set vault_key.key or VAULT_KEY"]
    assert setups == []  # nothing was set up


def test_one_missing_key_and_none_missing() -> None:
    with pytest.raises(ConfigurationError, match="1 key is missing") as info:
        Node(capability_config={"vault_key": {"key": "k"}})
    assert info.value.problems == ["signing_key: no signing secret: set signing_key.secret"]
    setups.clear()
    node = Node(capability_config={"vault_key": {"key": "k"}, "signing_key": {"secret": "s"}})
    assert sorted(setups) == ["signing_key", "vault_key"] and node.vault.key is not None


def test_encryption_reports_its_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEX_ENCRYPTION_KEYS", raising=False)
    cls = compose(NodeCompute, ["encryption"])
    with pytest.raises(ConfigurationError) as info:
        cls()
    assert info.value.problems[0].startswith("encryption: no encryption key (encryption.keys)")
    assert "ONEX_ENCRYPTION_KEYS" in info.value.problems[0]
    monkeypatch.setenv("ONEX_ENCRYPTION_KEYS", Encryption.generate_key("k1"))
    assert cls().crypto.key_ids == ["k1"]
    monkeypatch.delenv("ONEX_ENCRYPTION_KEYS")
    assert compose(NodeCompute, ["encryption"])(
        capability_config={"encryption": {"allow_ephemeral_key": True}}).crypto.ephemeral
