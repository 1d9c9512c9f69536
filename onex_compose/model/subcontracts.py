"""Subcontract models: the Pydantic backing models of mixin contracts (seed 002's import path).

``ModelErrorHandlingSubcontract``, ``EnumCircuitBreakerState`` and ``ModelErrorHandlingResult``
are seed 002's models, field for field (names, defaults, ranges), plus every key of seed 002's
``error_handling_config`` YAML section, so that the YAML contract and the model agree (a test
compares them). Unlike the seed's ``class Config``, configuration uses Pydantic v2's
``model_config``: unknown keys are errors (a typo is never dropped silently) and the model is
frozen (a node's configuration does not change under it).

The ``error_handling`` capability uses :class:`ModelErrorHandlingSubcontract` as its config
model (``"onex_compose.model.subcontracts:ModelErrorHandlingSubcontract"``), so a node contract
may carry one inline (seed 002: ``ModelContractCompute(subcontracts=[...])``).

Example:
    >>> from onex_compose.model.subcontracts import ModelErrorHandlingSubcontract
    >>> cfg = ModelErrorHandlingSubcontract(circuit_failure_threshold=10)
    >>> cfg.circuit_failure_threshold, cfg.error_retry_attempts
    (10, 3)
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "SUBCONTRACT_META_FIELDS",
    "EnumCircuitBreakerState",
    "ModelErrorHandlingResult",
    "ModelErrorHandlingSubcontract",
]

SUBCONTRACT_META_FIELDS: frozenset[str] = frozenset(
    {"subcontract_name", "subcontract_version", "applicable_node_types"})
"""Fields of a subcontract model that describe the subcontract itself, not configuration.

They have no key in the YAML ``<capability>_config`` section (the contract states them as
``mixin_name``, ``mixin_version`` and ``applicable_node_types``)."""

_ALL_NODE_TYPES = ["COMPUTE", "EFFECT", "REDUCER", "ORCHESTRATOR"]


class EnumCircuitBreakerState(str, Enum):
    """Circuit breaker state enumeration.

    Example:
        >>> EnumCircuitBreakerState("half_open") is EnumCircuitBreakerState.HALF_OPEN
        True
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class ModelErrorHandlingResult(BaseModel):
    """Error handling result model (the ``error_handling_result`` output of ``handle_error``).

    Example:
        >>> ModelErrorHandlingResult(error_category="transient", handling_action="retry",
        ...                          recovery_possible=True).recovery_suggestions
        []
    """

    model_config = ConfigDict(extra="forbid")

    error_category: str = Field(..., description="Error classification")
    handling_action: str = Field(..., description="Action taken")
    recovery_possible: bool = Field(..., description="Whether recovery is possible")
    recovery_suggestions: list[str] = Field(default_factory=list)


class ModelErrorHandlingSubcontract(BaseModel):
    """Error handling mixin Pydantic backing model.

    The seed's fields and ranges, plus the rest of the ``error_handling_config`` section:
    ``circuit_half_open_max_calls``, ``error_retry_backoff_multiplier``,
    ``max_retry_delay_ms``, ``enable_error_metrics``, ``sensitive_data_scrubbing`` and
    ``error_log_level``. ``max_retry_delay_ms`` caps each backed-off delay (a first delay
    above it is capped too, so the seed's ranges stay independent). Cross-field rule: no
    error type is both retriable and fatal.

    Example:
        >>> m = ModelErrorHandlingSubcontract()
        >>> m.subcontract_name, m.enable_circuit_breaker, m.error_retry_attempts
        ('mixin_error_handling', True, 3)
        >>> ModelErrorHandlingSubcontract(error_retry_attempts=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for ...
    """

    __onex_capability__: ClassVar[str] = "error_handling"

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "example": {
                "enable_circuit_breaker": True,
                "circuit_failure_threshold": 5,
                "error_retry_attempts": 3,
            }
        },
    )

    subcontract_name: str = Field(default="mixin_error_handling")
    subcontract_version: str = Field(default="1.0.0")
    applicable_node_types: list[str] = Field(default_factory=lambda: list(_ALL_NODE_TYPES))

    # Circuit breaker configuration
    enable_circuit_breaker: bool = Field(default=True)
    circuit_failure_threshold: int = Field(default=5, ge=1, le=100)
    circuit_timeout_ms: int = Field(default=30000, ge=1000, le=300000)
    circuit_half_open_max_calls: int = Field(
        default=3, ge=1, le=100,
        description="Trial calls let through while the circuit is half-open")

    # Retry configuration
    error_retry_attempts: int = Field(default=3, ge=1, le=10)
    error_retry_delay_ms: int = Field(default=1000, ge=100, le=60000)
    error_retry_backoff_multiplier: float = Field(
        default=2.0, ge=1.0, le=10.0, description="Delay growth factor between retries")
    max_retry_delay_ms: int = Field(
        default=30000, ge=100, le=300000,
        description="Upper bound of one retry delay (backed-off delays are capped to it)")

    # Error categorization
    retriable_error_types: list[str] = Field(
        default_factory=lambda: ["TimeoutError", "ConnectionError", "TemporaryFailure"]
    )
    fatal_error_types: list[str] = Field(
        default_factory=lambda: ["AuthenticationError", "ValidationError", "ConfigurationError"]
    )

    # Monitoring
    enable_error_metrics: bool = Field(default=True)
    sensitive_data_scrubbing: bool = Field(
        default=True, description="Scrub secrets (passwords, tokens, keys) from error details")
    error_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="ERROR")

    @model_validator(mode="after")
    def _cross_field(self) -> ModelErrorHandlingSubcontract:
        both = sorted(set(self.retriable_error_types) & set(self.fatal_error_types))
        if both:
            raise ValueError(
                f"error types {both} are listed as both retriable and fatal; keep each in one "
                "list")
        bad = [t for t in self.applicable_node_types if t not in _ALL_NODE_TYPES]
        if bad:
            raise ValueError(
                f"{bad[0]!r} not in [COMPUTE, EFFECT, REDUCER, ORCHESTRATOR]")
        return self
