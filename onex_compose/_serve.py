"""``onex serve``: load a node service from a contract or ``module:Class`` and run it.

Sits on top of the engine (like the CLI): it names the service classes and loads contracts.
The operations endpoint itself is :mod:`onex_compose._ops`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from onex_compose._build import has_capability

__all__ = ["TargetError", "load_service", "run_service"]

class TargetError(ValueError):
    """``onex serve``'s target cannot be loaded (a usage error: exit status 2)."""


_SERVICE_BASES = {"COMPUTE": "NodeComputeService", "EFFECT": "NodeEffectService",
                  "REDUCER": "NodeReducerService", "ORCHESTRATOR": "NodeOrchestratorService"}


def load_service(target: str, *, service_config: Mapping[str, Any] | None = None,
                 node_id: str | None = None) -> Any:
    """The node service ``onex serve TARGET`` runs.

    Args:
        target: a node contract file (its node type picks ``NodeComputeService``...), or
            ``module:Class`` / ``module:instance`` (a class without ``node_service`` gets it
            composed in; the current folder is importable).
        service_config: ``node_service`` settings laid over the contract's (``ops_port``...).
        node_id: the node's id (a class or contract target only).

    Raises:
        TargetError: the file or module cannot be loaded, or the object is not a node.
    """
    import importlib
    import os
    import sys
    from pathlib import Path

    from onex_compose import _services
    from onex_compose._build import compose
    from onex_compose._contract_compose import load_contract, load_node

    overrides = dict(service_config or {})
    if ":" not in target or Path(target).suffix.lower() in (".yaml", ".yml") \
            or Path(target).is_file():
        path = Path(target)
        if not path.is_file():
            raise TargetError(f"{target!r} is neither a contract file nor module:Class "
                              "(e.g. myapp.nodes:OrderService)")
        model = load_contract(str(path), kind="node")
        node_type = getattr(model, "node_type", None)
        if node_type is None:
            raise TargetError(f"{target} is not a node contract (no node_type)")
        base = getattr(_services, _SERVICE_BASES[node_type.value])
        return load_node(str(path), base=base, node_id=node_id,
                                      capability_config={"node_service": overrides})
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise TargetError(f"cannot import module {module_name!r}: {exc}") from None
    except AttributeError:
        raise TargetError(f"module {module_name!r} has no attribute {attr!r}") from None
    from onex_compose._nodes import NodeCoreBase

    if isinstance(obj, type) and issubclass(obj, NodeCoreBase):
        cls = obj if has_capability(obj, "node_service") else compose(
            obj, ["node_service"])
        try:
            return cls(capability_config={"node_service": overrides}, node_id=node_id)
        except TypeError as exc:
            raise TargetError(f"cannot create {target}: {exc} (onex serve calls it with "
                              "capability_config= and node_id=, as NodeCoreBase takes them)"
                              ) from None
    if isinstance(obj, NodeCoreBase):
        if not has_capability(obj, "node_service"):
            raise TargetError(f"{target} is a node without node_service; point at its class "
                              "instead (node_service is then composed in)")
        current = obj.service.config.model_dump()  # type: ignore[attr-defined]
        obj.setup_node_service({**current, **overrides})  # type: ignore[attr-defined]
        return obj
    raise TargetError(f"{target} is {type(obj).__name__}, not a node class or node")


async def run_service(node: Any, out: Any) -> None:
    """Serve ``node`` until SIGTERM/SIGINT, printing when it is up (``onex serve``)."""
    task = asyncio.get_running_loop().create_task(node.serve())
    while not task.done() and not node._onex_started:
        await asyncio.wait([task], timeout=0.02)
    if not task.done():
        url = node.service.ops_url
        where = f"; operations endpoint at {url}" if url else " (no operations endpoint)"
        import os

        print(f"onex serve: {node.node_id} started (pid {os.getpid()}){where}", file=out,
              flush=True)
    await task
    print(f"onex serve: {node.node_id} stopped", file=out, flush=True)
