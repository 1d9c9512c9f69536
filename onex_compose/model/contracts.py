"""Contract models (seed 002's import path ``onex_compose.model.contracts``).

Node contracts (:class:`ModelContract` and one class per node type), their subcontract
references and inline subcontracts, and the YAML mixin contract model, plus the functions that
load them safely from files.

Example:
    >>> from onex_compose.model.contracts import ModelContractCompute
    >>> from onex_compose.model.subcontracts import ModelErrorHandlingSubcontract
    >>> contract = ModelContractCompute(subcontracts=[
    ...     ModelErrorHandlingSubcontract(enable_circuit_breaker=True, error_retry_attempts=3)])
    >>> contract.error_handling_configuration.enable_circuit_breaker
    True
"""

from __future__ import annotations

from onex_compose._contract_compose import (
    compose_from_contract,
    load_contract,
    load_node,
    register_contract,
)
from onex_compose._contracts import (
    ModelComposition,
    ModelMixinAction,
    ModelMixinContract,
    ModelMixinDependency,
    ModelMixinMetric,
    ModelOutputField,
    ModelRequiredDependency,
    ModelSemVer,
)
from onex_compose._node_contracts import (
    ConfigView,
    ModelContract,
    ModelContractCompute,
    ModelContractEffect,
    ModelContractOrchestrator,
    ModelContractReducer,
    ModelInlineSubcontract,
    ModelSubcontractReference,
    SubcontractEntry,
    Subcontracts,
    contract_class_for,
)
from onex_compose._validate import ValidationReport, validate_contract

__all__ = [
    "ConfigView",
    "ModelComposition",
    "ModelContract",
    "ModelContractCompute",
    "ModelContractEffect",
    "ModelContractOrchestrator",
    "ModelContractReducer",
    "ModelInlineSubcontract",
    "ModelMixinAction",
    "ModelMixinContract",
    "ModelMixinDependency",
    "ModelMixinMetric",
    "ModelOutputField",
    "ModelRequiredDependency",
    "ModelSemVer",
    "ModelSubcontractReference",
    "SubcontractEntry",
    "Subcontracts",
    "ValidationReport",
    "compose_from_contract",
    "contract_class_for",
    "load_contract",
    "load_node",
    "register_contract",
    "validate_contract",
]
