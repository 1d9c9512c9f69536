"""Contract-driven composition: load a contract, build its node class, instantiate it.

``compose_from_contract(path_or_model)`` reads a node contract (safely, see
:mod:`onex_compose._loading`), checks its capabilities against the registry (unknown names
and node-type applicability are contract errors, reported with file and line), and composes
the node class from its node type and capability list, adding every capability a subcontract
configures. ``load_node`` also instantiates it: the engine asks the contract for each
capability's configuration (``capability_config_for``), so each subcontract reaches its
capability's setup hook.

``register_contract(path)`` registers a capability from its YAML mixin contract, so that its
metadata (node types, dependencies, ranks, aliases) comes from the contract and cannot drift
from it; this is how third-party and scaffolded capabilities join a registry.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from onex_compose._contracts import ModelMixinContract
from onex_compose._loading import ContractProblem, fail, raise_problems
from onex_compose._node_contracts import ModelContract
from onex_compose._validate import capability_problems, validate_contract

__all__ = ["compose_from_contract", "load_contract", "load_node", "register_contract"]

T = TypeVar("T")


def load_contract(contract: Any, *, kind: str | None = None,
                  root: str | os.PathLike[str] | None = None,
                  registry: Any = None) -> ModelMixinContract | ModelContract:
    """Load and validate a contract (file path, mapping or model); raise on any problem.

    Args:
        contract: a YAML file path, a mapping, or a contract model (returned as is).
        kind: ``"mixin"`` or ``"node"``; detected from the content when ``None``.
        root: the contract tree's root for references (default: nearest marker folder).
        registry: registry for capability checks (default: the default registry).

    Returns:
        A :class:`ModelMixinContract`, or the node contract class for its node type.

    Raises:
        ContractError: every problem found, each with its field path, file and line.

    Example:
        >>> load_contract({"node_type": "EFFECT", "capabilities": []}).__class__.__name__
        'ModelContractEffect'
    """
    if isinstance(contract, ModelMixinContract | ModelContract):
        return contract
    report = validate_contract(contract, kind=kind, root=root, registry=registry)
    report.raise_for_errors()
    if kind is not None and report.kind != kind:
        fail("Wrong kind of contract", [ContractProblem(
            f"expected a {kind} contract, got a {report.kind} contract", file=report.source)],
            report.source)
    return report.contract  # type: ignore[no-any-return]


def _node_contract(contract: Any, root: Any, registry: Any) -> ModelContract:
    model = load_contract(contract, root=root, registry=registry)
    if isinstance(model, ModelMixinContract):
        fail("Not a node contract", [ContractProblem(
            f"{model.mixin_name} is a mixin contract; compose_from_contract() and load_node() "
            "take a node contract (node_type, capabilities, subcontracts)")])
    if not isinstance(contract, str | os.PathLike | Mapping):
        # a model built in Python: check its capabilities the way a loaded file is checked
        raise_problems("Invalid node contract", capability_problems(model, registry))
    return model


def _base_for(model: ModelContract, base: type | None) -> type:
    from onex_compose._nodes import (
        NodeCompute,
        NodeEffect,
        NodeOrchestrator,
        NodeReducer,
    )

    bases: dict[str, type] = {"COMPUTE": NodeCompute, "EFFECT": NodeEffect,
                              "REDUCER": NodeReducer, "ORCHESTRATOR": NodeOrchestrator}
    node_type = model.node_type.value
    if base is None:
        return bases[node_type]
    own = getattr(base, "node_type", None)
    own = getattr(own, "value", own)
    if own != node_type:
        fail("Base does not match the contract", [ContractProblem(
            f"the contract is for {node_type} nodes but base {base.__qualname__} is a "
            f"{own or 'node without a type'}; use a {node_type} base such as "
            f"{bases[node_type].__name__}", ("node_type",))])
    return base


def compose_from_contract(contract: Any, *, base: type | None = None, registry: Any = None,
                          root: str | os.PathLike[str] | None = None, **options: Any) -> type:
    """Build the node class a contract describes.

    Args:
        contract: a node contract file, mapping or model.
        base: the class to extend (default: ``NodeCompute``/``NodeEffect``/... by node type;
            e.g. ``NodeComputeService`` for a long-running service). Must match the node type.
        registry: a private registry (default: the default registry).
        root: the contract tree's root for references.
        **options: structural options passed to :func:`onex_compose.compose` (``prefer=``,
            ``exclude=``, ``alias=``).

    Returns:
        The composed class: its capabilities are the contract's ``capabilities`` plus every
        capability a subcontract configures.

    Raises:
        ContractError: the contract is invalid (unknown capability, not applicable to the
            node type, missing subcontract file, integration field used twice, ...).
        CompositionError: the capabilities cannot be composed (conflicts, cycles).

    Example:
        >>> cls = compose_from_contract({"node_type": "COMPUTE", "capabilities": ["metrics"]})
        >>> cls.__name__
        'NodeCompute[metrics]'
    """
    from onex_compose._build import compose

    model = _node_contract(contract, root, registry)
    cls = _base_for(model, base)
    names = model.all_capabilities
    if registry is not None:
        options["registry"] = registry
    return compose(cls, names, **options)


def load_node(contract: Any, *, base: type | None = None, registry: Any = None,
              root: str | os.PathLike[str] | None = None,
              capability_config: Mapping[str, Any] | None = None, node_id: str | None = None,
              **options: Any) -> Any:
    """Build the node class a contract describes and instantiate it with that contract.

    Each subcontract configures its capability (through ``contract.capability_config_for``);
    ``capability_config=`` overrides the contract, keyed by capability name.

    Example:
        >>> node = load_node({"node_type": "COMPUTE", "capabilities": ["metrics"]})
        >>> type(node).__name__
        'NodeCompute[metrics]'
    """
    model = _node_contract(contract, root, registry)
    cls = compose_from_contract(model, base=base, registry=registry, root=root, **options)
    return cls(model, capability_config=capability_config, node_id=node_id)


def register_contract(path: str | os.PathLike[str], *, registry: Any = None,
                      replace: bool = False) -> Any:
    """Register the capability a YAML mixin contract describes; return its spec.

    The contract's ``composition`` section says where the mixin lives (``module``,
    ``mixin_class``, ``config_model``); its ``requires_dependencies``, ``dependencies``,
    ``applicable_node_types`` and the rest of ``composition`` become the registered metadata,
    exactly as for the built-in capabilities. Nothing is imported until a composition uses it.

    Args:
        path: the ``mixin_<name>.yaml`` file.
        registry: where to register (default: the default registry).
        replace: replace an existing registration of the same name.

    Raises:
        ContractError: the contract is invalid, or names no module outside the built-in
            capabilities folder.
    """
    from onex_compose._manifest import PACKAGE, _entry
    from onex_compose._registry import default_registry

    target = registry if registry is not None else default_registry
    model = load_contract(path, kind="mixin", registry=target)
    assert isinstance(model, ModelMixinContract)
    data = model.to_data()
    p = Path(path)
    builtin = _is_builtin(p)
    comp = data.get("composition") or {}
    if "module" not in comp and not builtin:
        fail("Cannot register contract", [ContractProblem(
            f"composition.module is required for a capability outside {PACKAGE}: name the "
            f"module that defines {comp.get('mixin_class') or 'its mixin'} (e.g. module: "
            f"\"mypkg.{model.capability}\")", ("composition",), file=str(path))], str(path))
    name, entry, aliases = _entry(data, p)
    entry["contract"] = p.name if builtin else str(p)
    entry["declared_at"] = str(p)
    target.load_manifest({"capabilities": {name: entry},
                          "aliases": {alias: [name] for alias in aliases}},
                         source=str(p), replace=replace)
    return target.get(name)


def _is_builtin(path: Path) -> bool:
    try:
        contracts_dir = importlib.import_module("onex_compose.capabilities").CONTRACTS_DIR
    except ImportError:  # pragma: no cover - the package always ships it
        return False
    root = Path(contracts_dir).resolve()
    parent = path.resolve().parent
    return parent == root or parent.parent == root  # beside a module, or in a capability's package
