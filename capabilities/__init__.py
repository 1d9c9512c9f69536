"""The built-in capabilities (installed as ``onex_compose.capabilities``).

Each capability lives in its own module next to its YAML contract ``mixin_<name>.yaml``.
``MANIFEST`` describes all of them without importing any: it is generated from the contracts
by ``python -m onex_compose._manifest`` and a test checks it is current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["CONTRACTS_DIR", "MANIFEST"]

CONTRACTS_DIR = Path(__file__).parent
MANIFEST: dict[str, Any] = json.loads((CONTRACTS_DIR / "_manifest.json").read_text("utf-8"))
