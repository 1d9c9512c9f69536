"""``onex profile MODULE:Class --inputs FILE.jsonl``: profile a node's ``process()`` over inputs.

The class is imported (the current folder is on the import path, as with ``python -m``), made a
profiling node (composed with ``profiling`` unless it already has it), and instantiated with
``sample_rate: 1``; then ``process()`` runs once per input line (each line one JSON value, passed
as the single argument; blank lines skipped), cycling through them for ``--calls N`` calls
(default: one pass). The report is printed as text; ``--json`` and ``--collapsed`` write it to
files. A bad module path, class or input line exits with status 2 and says which.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = ["add_arguments", "run"]


class _Usage(Exception):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``profile`` subcommand's arguments."""
    p.add_argument("target", metavar="MODULE:Class", help="the node class to profile")
    p.add_argument("--inputs", required=True, metavar="FILE.jsonl",
                   help="one JSON value per line, each passed to process()")
    p.add_argument("--calls", type=int, default=None, metavar="N",
                   help="process() calls to make, cycling through the inputs (default: one "
                        "per input)")
    p.add_argument("--mode", choices=("sampling", "deterministic"), default="deterministic",
                   help="cProfile (deterministic, default) or pyinstrument (sampling)")
    p.add_argument("--top", type=int, default=20, metavar="N", help="rows per report section")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the report as JSON")
    p.add_argument("--collapsed", metavar="OUT",
                   help="write collapsed stacks (flamegraph.pl, speedscope)")


def _load_class(target: str) -> type:
    module_name, sep, cls_name = target.partition(":")
    if not sep or not module_name or not cls_name:
        raise _Usage(f"{target!r} is not MODULE:Class (e.g. myapp.nodes:PriceNode)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _Usage(f"cannot import module {module_name!r} ({exc}); check the module path "
                     "and that it is importable from the current folder") from exc
    cls = getattr(module, cls_name, None)
    if not isinstance(cls, type):
        raise _Usage(f"module {module_name!r} has no class {cls_name!r}")
    if not callable(getattr(cls, "process", None)):
        raise _Usage(f"{target} has no process() method to profile")
    return cls


def _read_inputs(path: str) -> list[Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise _Usage(f"cannot read --inputs {path}: {exc.strerror or exc}") from exc
    values = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise _Usage(f"{path}:{n}: not a JSON value ({exc.msg})") from exc
    if not values:
        raise _Usage(f"--inputs {path} has no input lines")
    return values


def _node(cls: type, mode: str, top: int) -> Any:
    from onex_compose import compose, has_capability

    node_cls = cls if has_capability(cls, "profiling") else compose(cls, ["profiling"])
    cfg = {"profiling": {"sample_rate": 1.0, "mode": mode, "report_top": top,
                         "keep": "latest", "max_profiles": 100_000}}
    try:
        return node_cls(capability_config=cfg)
    except TypeError:  # a hand-written __init__(contract): configure after building it
        node = node_cls(None)
        node.setup_profiling(cfg["profiling"])
        return node


async def _drive(node: Any, inputs: list[Any], calls: int) -> None:
    for i in range(calls):
        result = node.process(inputs[i % len(inputs)])
        if inspect.isawaitable(result):
            await result


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``onex profile``; returns the exit status."""
    try:
        cls = _load_class(args.target)
        inputs = _read_inputs(args.inputs)
        calls = len(inputs) if args.calls is None else args.calls
        if calls < 1:
            raise _Usage("--calls must be at least 1")
    except _Usage as exc:
        print(f"onex profile: error: {exc}", file=err)
        return 2
    node = _node(cls, args.mode, args.top)
    asyncio.run(_drive(node, inputs, calls))
    report = node.profiler.report(top=args.top)
    print(report.to_text(), file=out)
    if args.json_out:
        Path(args.json_out).write_text(report.to_json(indent=2) + "\n", encoding="utf-8")
    if args.collapsed:
        Path(args.collapsed).write_text(report.to_collapsed() + "\n", encoding="utf-8")
    return 0
