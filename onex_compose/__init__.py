"""onex-compose: build node services out of capability mixins chosen by name.

Example:
    >>> from onex_compose import NodeCompute, compose, explain
    >>> Service = compose(NodeCompute, ["caching", "metrics"])
    >>> Service.__composition__.capabilities
    ('metrics', 'caching')

The public surface is this module's ``__all__``; everything else lives in private modules named
after their role (``_registry``, ``_resolve``, ``_build``, ``_explain``, ``_nodes``, ...).
Names that need a capability module or Pydantic (the ``Mixin*`` classes, the service classes,
contract models) are imported lazily on first access, so ``import onex_compose`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onex_compose._build import Composition, cache_clear, cache_info, compose, has_capability
from onex_compose._config import coerce_config
from onex_compose._explain import explain
from onex_compose._facility import facility
from onex_compose._node_types import EnumNodeType
from onex_compose._nodes import (
    NodeCompute,
    NodeCoreBase,
    NodeEffect,
    NodeOrchestrator,
    NodeReducer,
    NodeService,
)
from onex_compose._registry import CapabilitySpec, Registry, capability, default_registry
from onex_compose._resolve import Options
from onex_compose.exceptions import (
    CapabilityConflictError,
    CompositionError,
    ConfigurationError,
    ContractError,
    DependencyCycleError,
    MixinDefinitionError,
    MROError,
    NotApplicableError,
    NotComposedError,
    OnexError,
    RegistrationError,
    ServiceUnavailableError,
    UnknownCapabilityError,
)

if TYPE_CHECKING:
    from onex_compose._contract_compose import (
        compose_from_contract,
        load_contract,
        load_node,
        register_contract,
    )
    from onex_compose._contracts import ModelMixinContract
    from onex_compose._node_contracts import (
        ModelContract,
        ModelContractCompute,
        ModelContractEffect,
        ModelContractOrchestrator,
        ModelContractReducer,
        ModelSubcontractReference,
    )
    from onex_compose._ops import ops_app
    from onex_compose._seed import MixinDependencyResolver, create_service_with_capabilities
    from onex_compose._services import (
        NodeComputeService,
        NodeEffectService,
        NodeOrchestratorService,
        NodeReducerService,
    )
    from onex_compose._validate import ValidationReport, validate_contract
    from onex_compose.model.subcontracts import ModelErrorHandlingSubcontract

__version__ = "0.1.0"

# name -> module that defines it, imported on first access (PEP 562)
_LAZY = {
    "MixinDependencyResolver": "onex_compose._seed",
    "create_service_with_capabilities": "onex_compose._seed",
    "NodeComputeService": "onex_compose._services",
    "NodeEffectService": "onex_compose._services",
    "NodeReducerService": "onex_compose._services",
    "NodeOrchestratorService": "onex_compose._services",
    "ModelContract": "onex_compose._node_contracts",
    "ModelContractCompute": "onex_compose._node_contracts",
    "ModelContractEffect": "onex_compose._node_contracts",
    "ModelContractReducer": "onex_compose._node_contracts",
    "ModelContractOrchestrator": "onex_compose._node_contracts",
    "ModelSubcontractReference": "onex_compose._node_contracts",
    "ModelMixinContract": "onex_compose._contracts",
    "ModelErrorHandlingSubcontract": "onex_compose.model.subcontracts",
    "compose_from_contract": "onex_compose._contract_compose",
    "load_node": "onex_compose._contract_compose",
    "load_contract": "onex_compose._contract_compose",
    "register_contract": "onex_compose._contract_compose",
    "validate_contract": "onex_compose._validate",
    "ops_app": "onex_compose._ops",
    "ValidationReport": "onex_compose._validate",
}

__all__ = [
    "CapabilityConflictError",
    "CapabilitySpec",
    "Composition",
    "CompositionError",
    "ConfigurationError",
    "ContractError",
    "DependencyCycleError",
    "EnumNodeType",
    "MROError",
    "MixinDefinitionError",
    "MixinDependencyResolver",
    "ModelContract",
    "ModelContractCompute",
    "ModelContractEffect",
    "ModelContractOrchestrator",
    "ModelContractReducer",
    "ModelErrorHandlingSubcontract",
    "ModelMixinContract",
    "ModelSubcontractReference",
    "NodeCompute",
    "NodeComputeService",
    "NodeCoreBase",
    "NodeEffect",
    "NodeEffectService",
    "NodeOrchestrator",
    "NodeOrchestratorService",
    "NodeReducer",
    "NodeReducerService",
    "NodeService",
    "NotApplicableError",
    "NotComposedError",
    "OnexError",
    "Options",
    "RegistrationError",
    "Registry",
    "ServiceUnavailableError",
    "UnknownCapabilityError",
    "ValidationReport",
    "cache_clear",
    "cache_info",
    "capability",
    "coerce_config",
    "compose",
    "compose_from_contract",
    "create_service_with_capabilities",
    "default_registry",
    "explain",
    "facility",
    "has_capability",
    "load_contract",
    "load_node",
    "ops_app",
    "register_contract",
    "validate_contract",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        from onex_compose._seedpaths import lookup

        try:
            value = lookup(name)  # MixinCaching, CachingProtocol, ... from the registry
        except AttributeError:
            raise AttributeError(f"module 'onex_compose' has no attribute {name!r}") from None
        globals()[name] = value
        return value
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


for _name in ("Composition", "CapabilitySpec", "Registry", "Options", "EnumNodeType",
              "NodeCoreBase", "NodeCompute", "NodeEffect", "NodeReducer", "NodeOrchestrator"):
    globals()[_name].__module__ = "onex_compose"
del _name
