"""The capabilities' logger: loguru's, with the library's records disabled by default.

loguru's advice for libraries: ``logger.disable("<package>")`` so an application sees nothing
from the library until it calls ``logger.enable("onex_compose")``. The disable happens here, when
the first capability module is imported, so ``import onex_compose`` itself does not import
loguru (about 40 ms).
"""

from __future__ import annotations

from loguru import logger

__all__ = ["logger"]

logger.disable("onex_compose")
