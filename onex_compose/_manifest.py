"""Generate the built-in capability manifest from the YAML mixin contracts.

The manifest (``capabilities/_manifest.json``) lets the registry answer every metadata question
without parsing YAML or importing capability modules. It is derived, never edited by hand:

* ``requires``/``optional``/``requires_protocols`` come from the contract's
  ``requires_dependencies`` (``type: capability`` or ``type: protocol``, ``optional: true``
  making a dependency order-only);
* ``provides`` (protocols) and ``covers`` (other capabilities it stands in for) from
  ``dependencies``;
* ``applicable_node_types`` from the contract;
* the rest (mixin class, config model, rank, before/after, conflicts, subcontract key,
  aliases) from the contract's ``composition`` section, and the hook names by looking at the
  mixin class.

Run ``python -m onex_compose._manifest`` after editing a contract; ``--check`` exits 1 when the
file on disk is stale (the test suite runs the same comparison).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from onex_compose._registry import ALL_NODE_TYPES, DEFAULT_RANK, protocol_key

__all__ = ["build_manifest", "contract_paths", "main"]

PACKAGE = "onex_compose.capabilities"


def _contracts_dir() -> Path:
    import importlib

    return Path(importlib.import_module("onex_compose.capabilities").CONTRACTS_DIR)


def contract_paths(folder: Path | None = None) -> list[Path]:
    """Every built-in ``mixin_*.yaml``: beside a one-module capability, or inside its package folder.

    A small capability is one module with its contract beside it (``capabilities/retry.py`` and
    ``capabilities/mixin_retry.yaml``); a large one is a package whose contract sits in its folder
    (``capabilities/caching/mixin_caching.yaml``).

    Example:
        >>> any(p.name == "mixin_retry.yaml" for p in contract_paths())
        True
    """
    folder = folder or _contracts_dir()
    found = [*folder.glob("mixin_*.yaml"), *folder.glob("*/mixin_*.yaml")]
    return sorted(found, key=lambda p: p.name)


def _entry(data: dict[str, Any], path: Path) -> tuple[str, dict[str, Any], list[str]]:
    comp = dict(data.get("composition") or {})
    mixin_name = str(data["mixin_name"])
    name = comp.pop("capability", None) or mixin_name.removeprefix("mixin_")
    module = comp.pop("module", f"{PACKAGE}.{name}")
    cls_name = comp.pop("mixin_class", None) or "Mixin" + "".join(
        p.capitalize() for p in name.split("_"))
    entry: dict[str, Any] = {"mixin": f"{module}:{cls_name}"}
    requires: set[str] = set()
    optional: set[str] = set()
    req_protos: set[str] = set()
    opt_protos: set[str] = set()
    for dep in data.get("requires_dependencies") or []:
        kind = dep.get("type", "capability")
        is_opt = bool(dep.get("optional", False))
        if kind == "protocol":
            (opt_protos if is_opt else req_protos).add(protocol_key(dep["name"]))
        else:
            (optional if is_opt else requires).add(dep["name"])
    provides: set[str] = set()
    covers: set[str] = set()
    for dep in data.get("dependencies") or []:
        if dep.get("type") == "protocol":
            provides.add(protocol_key(dep["name"]))
        elif dep.get("name") != name:
            covers.add(dep["name"])
    for proto in comp.pop("provides", []) or []:
        provides.add(protocol_key(proto))
    entry.update({k: sorted(v) for k, v in (
        ("requires", requires), ("optional", optional), ("requires_protocols", req_protos),
        ("provides", provides), ("covers", covers)) if v})
    if opt_protos:
        entry["_optional_protocols"] = sorted(opt_protos)
    types = set(data.get("applicable_node_types") or ALL_NODE_TYPES)
    if types != ALL_NODE_TYPES:
        entry["applicable_node_types"] = sorted(types)
    for key in ("before", "after", "conflicts"):
        if comp.get(key):
            entry[key] = sorted(comp.pop(key))
        else:
            comp.pop(key, None)
    rank = comp.pop("rank", DEFAULT_RANK)
    if rank != DEFAULT_RANK:
        entry["rank"] = rank
    for key in ("subcontract_key", "guard_rank"):
        if comp.get(key) is not None:
            entry[key] = comp.pop(key)
        else:
            comp.pop(key, None)
    config_model = comp.pop("config_model", None)
    if config_model:
        entry["config_ref"] = config_model if ":" in config_model else f"{module}:{config_model}"
    entry["contract"] = path.name
    aliases = list(comp.pop("aliases", []) or [])
    # hook names: only when they differ from the convention <hook>_<capability>
    for hook in ("setup", "start", "close"):
        explicit = comp.pop(hook, None)
        if explicit:
            entry[hook] = explicit
    if comp:
        raise ValueError(f"{path.name}: unknown keys in 'composition': {sorted(comp)}")
    return name, entry, aliases


def build_manifest(folder: Path | None = None) -> dict[str, Any]:
    """Build the manifest mapping from every ``mixin_*.yaml`` in the capabilities folder."""
    folder = folder or _contracts_dir()
    caps: dict[str, dict[str, Any]] = {}
    aliases: dict[str, list[str]] = {}
    for path in contract_paths(folder):
        data = yaml.safe_load(path.read_text("utf-8"))
        name, entry, names = _entry(data, path)
        caps[name] = entry
        for alias in names:
            aliases[alias] = [name]
    bundles = folder / "bundles.yaml"
    if bundles.exists():
        for alias, targets in (yaml.safe_load(bundles.read_text("utf-8")) or {}).items():
            aliases[alias] = list(targets)
    # optional protocol dependencies become order-only edges to their providers
    for entry in caps.values():
        for proto in entry.pop("_optional_protocols", []):
            providers = [n for n, e in caps.items() if proto in e.get("provides", [])]
            if providers:
                entry["optional"] = sorted(set(entry.get("optional", [])) | set(providers))
    return {"capabilities": dict(sorted(caps.items())), "aliases": dict(sorted(aliases.items()))}


def render(manifest: dict[str, Any]) -> str:
    """The manifest as the JSON text stored on disk."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` verify) ``capabilities/_manifest.json``."""
    args = sys.argv[1:] if argv is None else argv
    path = _contracts_dir() / "_manifest.json"
    text = render(build_manifest())
    if "--check" in args:
        current = path.read_text("utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is stale; run: python -m onex_compose._manifest", file=sys.stderr)
            return 1
        print(f"{path} is current")
        return 0
    path.write_text(text, "utf-8")
    print(f"wrote {path} ({len(json.loads(text)['capabilities'])} capabilities)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
