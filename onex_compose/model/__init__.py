"""Contract and subcontract models (seed 002's ``onex_compose.model`` package).

``onex_compose.model.contracts`` holds node contracts and the YAML mixin contract model;
``onex_compose.model.subcontracts`` holds the subcontract (config) models such as
``ModelErrorHandlingSubcontract``. Both are re-exported here.
"""

from __future__ import annotations

from onex_compose.model.contracts import *  # noqa: F403
from onex_compose.model.contracts import __all__ as _contracts_all
from onex_compose.model.subcontracts import *  # noqa: F403
from onex_compose.model.subcontracts import __all__ as _subcontracts_all

__all__ = [*_contracts_all, *_subcontracts_all]
