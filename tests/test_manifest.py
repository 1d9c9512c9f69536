"""The generated capability manifest: current with the contracts, and lazy loading holds."""

from __future__ import annotations

import json
import subprocess
import sys

from onex_compose import default_registry
from onex_compose._manifest import build_manifest, render
from onex_compose.capabilities import CONTRACTS_DIR


def test_manifest_on_disk_matches_the_contracts() -> None:
    on_disk = (CONTRACTS_DIR / "_manifest.json").read_text("utf-8")
    assert on_disk == render(build_manifest()), (
        "capabilities/_manifest.json is stale: run `python -m onex_compose._manifest`")


def test_every_contract_is_registered_with_its_metadata() -> None:
    manifest = build_manifest()
    for name, entry in manifest["capabilities"].items():
        spec = default_registry.get(name)
        assert spec.mixin_ref == entry["mixin"]
        assert sorted(spec.requires) == entry.get("requires", [])
        assert spec.contract == entry["contract"]


def test_every_manifest_entry_imports_and_follows_the_mixin_rules() -> None:
    for spec in default_registry:
        mixin = spec.mixin  # imports and checks (no __init__, empty slots, no metaclass)
        assert vars(mixin).get("__onex_capability__") == spec.name, (
            f"{mixin.__qualname__} must declare __onex_capability__ = {spec.name!r}")
        if spec.config_ref:
            assert spec.config_model is not None


def test_reading_metadata_imports_no_capability_module_and_no_yaml() -> None:
    code = (
        "import sys, json\n"
        "import onex_compose\n"
        "from onex_compose import default_registry\n"
        "names = [s.name for s in default_registry]\n"
        "'caching' in default_registry\n"
        "mods = sorted(m for m in sys.modules if m.startswith('onex_compose.capabilities.'))\n"
        "print(json.dumps({'mods': mods, 'yaml': 'yaml' in sys.modules, 'n': len(names),\n"
        "                  'nx': 'networkx' in sys.modules}))\n"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout)
    assert out["mods"] == []
    assert out["yaml"] is False
    assert out["nx"] is False
    assert out["n"] >= 1


def test_composing_one_capability_imports_only_what_it_needs() -> None:
    code = (
        "import sys, json\n"
        "from onex_compose import NodeCompute, compose, default_registry\n"
        "cls = compose(NodeCompute, ['node_service'])\n"
        "mods = sorted(m for m in sys.modules if m.startswith('onex_compose.capabilities.'))\n"
        "print(json.dumps(mods))\n"
    )
    mods = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout)
    # its module, plus the shared logger it logs through; no other capability
    assert mods == ["onex_compose.capabilities._log", "onex_compose.capabilities.node_service"]
