"""The capabilities' logger: loguru's, with the library's records disabled by default.

loguru's advice for libraries: ``logger.disable("<package>")`` so an application sees nothing
from the library until it calls ``logger.enable("onex_compose")``. The disable happens here, when
the first capability module is imported, so ``import onex_compose`` itself does not import
loguru (about 40 ms).

``logger`` passes every record through the project's one scrubber (``onex_compose._redact``:
a Redis error that quotes a URL never prints its password); the patch runs only for records
that are emitted. ``base_logger`` is loguru's own, for loggers that bring their own scrubber
(the logging capability's node loggers, whose scrub keys are configurable).
"""

from __future__ import annotations

from typing import Any

from loguru import logger as base_logger

from onex_compose._redact import Redactor

__all__ = ["base_logger", "logger"]

_redactor = Redactor(mask="[REDACTED]")


def _scrub(record: Any) -> None:
    extra = record["extra"]
    for key, value in extra.items():
        if _redactor.sensitive(key):
            extra[key] = _redactor.mask
        elif not isinstance(value, int | float | bool | type(None)):
            extra[key] = _redactor.value(value)
    if record["message"]:
        record["message"] = _redactor.text(record["message"])


logger = base_logger.patch(_scrub)
base_logger.disable("onex_compose")
