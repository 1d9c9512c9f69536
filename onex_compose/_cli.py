"""The ``onex`` command line: validate contracts, list, explain and graph compositions, scaffold.

Commands::

    onex --version                           the installed version
    onex validate PATH... | --installed      validate mixin and node contracts (files or folders;
                                             --installed: the contracts shipped with this install)
    onex run contract_validator --contract PATH
                                             seed 002's spelling of the same
    onex list                                capabilities and aliases (no capability is imported)
    onex explain BASE [CAP...]               what compose(BASE, [CAP...]) builds, and why (no
                                             CAP: the base itself)
    onex graph BASE [CAP...] [-o FILE]       its dependency graph as DOT (PNG/SVG with Graphviz)
    onex new capability NAME [--target DIR] [--package]
                                             scaffold a capability: contract, model, mixin, test
                                             (--package: a capabilities/<name>/ package)
    onex demo [--json] [ARGS...]             run the demo (onex_compose._demo)
    onex profile MODULE:Class --inputs FILE.jsonl [--calls N] [--mode M] [--json OUT]
                 [--collapsed OUT]           profile process() over the inputs, print the report

Every command with ``--format`` also takes ``--json`` as a short form of ``--format json``.

Every command returns 0 on success and 1 on failure (2 for a usage error); errors go to stderr
as one readable message, never a traceback. ``main(argv)`` runs in-process (tests use it); the
``onex`` console script calls it. Written with :mod:`argparse` (standard library, no extra
dependency for a tool that must start fast).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from onex_compose.exceptions import OnexError, did_you_mean

__all__ = ["main"]

BASES = ("NodeCompute", "NodeEffect", "NodeReducer", "NodeOrchestrator", "NodeComputeService",
         "NodeEffectService", "NodeReducerService", "NodeOrchestratorService")
_TYPE_BASES = {"COMPUTE": "NodeCompute", "EFFECT": "NodeEffect", "REDUCER": "NodeReducer",
               "ORCHESTRATOR": "NodeOrchestrator"}
TOOLS = ("contract_validator",)


class _UsageError(Exception):
    """A command line that cannot be acted on (exit status 2)."""


def get_registry() -> Any:
    """The registry the CLI reads (the default registry; tests substitute their own)."""
    from onex_compose._registry import default_registry

    return default_registry


# -- validate ---------------------------------------------------------------------------------


def _emit_reports(paths: Sequence[str], fmt: str, strict: bool, quiet: bool,
                  root: str | None, out: TextIO) -> int:
    from onex_compose._validate import render_reports, validate_paths

    reports = validate_paths(paths, root=root, registry=get_registry())
    ok = all(r.ok and not (strict and r.warnings) for r in reports)
    headers = len(paths) > 1 or any(Path(p).is_dir() for p in paths)
    if not (quiet and ok):
        print(render_reports(reports, fmt, headers=headers), file=out)
    return 0 if ok else 1


def _installed_contracts_dir() -> str:
    """The folder of the contracts installed with this package (``onex_compose.capabilities``)."""
    caps = importlib.import_module("onex_compose.capabilities")
    return str(caps.CONTRACTS_DIR)


def _cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    paths = list(args.paths)
    if args.installed:
        paths.append(_installed_contracts_dir())
    if not paths:
        raise _UsageError("give contract files or folders to validate, or --installed for the "
                          "contracts shipped with onex-compose")
    return _emit_reports(paths, args.format, args.strict, args.quiet, args.root, out)


def _cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.tool not in TOOLS:
        raise _UsageError(f"unknown tool {args.tool!r}{did_you_mean(args.tool, TOOLS)}; "
                          f"available: {', '.join(TOOLS)}")
    if not args.contract:
        raise _UsageError("onex run contract_validator needs --contract PATH (repeatable)")
    return _emit_reports(args.contract, args.format, args.strict, args.quiet, args.root, out)


# -- list -------------------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    reg = get_registry()
    specs = list(reg)
    aliases = dict(reg.aliases)
    alias_of: dict[str, list[str]] = {}
    for alias, targets in aliases.items():
        if len(targets) == 1:
            alias_of.setdefault(targets[0], []).append(alias)
    if args.format == "json":
        data = {
            "capabilities": [
                {"name": s.name, **s.to_manifest(), "aliases": sorted(alias_of.get(s.name, []))}
                for s in specs],
            "aliases": {a: list(t) for a, t in sorted(aliases.items())},
        }
        print(json.dumps(data, indent=2), file=out)
        return 0
    if not specs:
        print("no capabilities registered", file=out)
        return 0
    rows = [("capability", "requires", "node types", "aliases")]
    for s in specs:
        types = "all" if len(s.applicable_node_types) == 4 else ",".join(
            sorted(s.applicable_node_types))
        rows.append((s.name, ",".join(sorted(s.requires)) or "-", types,
                     ",".join(sorted(alias_of.get(s.name, []))) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    bundles = {a: t for a, t in aliases.items() if len(t) > 1}
    if bundles:
        print("\nbundles:", file=out)
        for alias, targets in sorted(bundles.items()):
            print(f"  {alias} -> {', '.join(targets)}", file=out)
    return 0


# -- explain / graph --------------------------------------------------------------------------


def _resolve_base(name: str) -> type:
    import onex_compose

    key = _TYPE_BASES.get(name.upper(), name)
    if ":" in key:
        module, _, attr = key.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise _UsageError(f"cannot import base {name!r}: {exc}") from None
    elif key in BASES:
        try:
            obj = getattr(onex_compose, key)
        except (AttributeError, ImportError) as exc:
            raise _UsageError(f"base {key!r} is not available in this build: {exc}") from None
    else:
        raise _UsageError(
            f"unknown base {name!r}{did_you_mean(name, BASES)}; use one of {', '.join(BASES)} "
            "(or a node type such as COMPUTE, or module:Class)")
    if not isinstance(obj, type):
        raise _UsageError(f"base {name!r} is not a class")
    return obj


def _compose_args(args: argparse.Namespace) -> type:
    from onex_compose._build import compose

    base = _resolve_base(args.base)
    if not args.capabilities and not (args.exclude or args.prefer or args.alias):
        return base  # no capability asked for: explain the base itself
    options: dict[str, Any] = {}
    if args.exclude:
        options["exclude"] = list(args.exclude)
    for flag, key in (("prefer", "prefer"), ("alias", "alias")):
        values = getattr(args, flag) or []
        pairs = {}
        for item in values:
            left, sep, right = item.partition("=")
            if not sep or not left or not right:
                raise _UsageError(f"--{flag} takes NAME=VALUE, got {item!r}")
            pairs[left] = right
        if pairs:
            options[key] = pairs
    if get_registry() is not _default_registry():
        options["registry"] = get_registry()
    return compose(base, list(args.capabilities), **options)


def _default_registry() -> Any:
    from onex_compose._registry import default_registry

    return default_registry


def _cmd_explain(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from onex_compose._explain import explain

    report = explain(_compose_args(args))
    if args.format == "json":
        print(report.to_json(), file=out)
    elif args.format == "dot":
        print(report.to_dot(), end="", file=out)
    else:
        print(report, file=out)
        if not args.capabilities:
            print(f"\n{args.base} alone: add capability names to see what they bring, e.g. "
                  f"'onex explain {args.base} caching retry' ('onex list' shows them all)",
                  file=out)
    return 0


def _cmd_graph(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from onex_compose._explain import explain

    dot = explain(_compose_args(args)).to_dot()
    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lower().lstrip(".") if args.output else "dot"
        fmt = {"gv": "dot", "": "dot"}.get(suffix, suffix)
    if fmt not in ("dot", "png", "svg", "pdf"):
        raise _UsageError(f"unknown graph format {fmt!r}; use dot, png, svg or pdf")
    if fmt == "dot":
        if args.output:
            Path(args.output).write_text(dot, "utf-8")
            print(f"wrote {args.output}", file=out)
        else:
            print(dot, end="", file=out)
        return 0
    if not args.output:
        raise _UsageError(f"{fmt.upper()} output needs -o FILE (DOT goes to stdout without -o)")
    exe = shutil.which("dot")
    if exe is None:
        print(f"error: Graphviz is not installed ('dot' not found on PATH), so {fmt.upper()} "
              "cannot be rendered. Install it (apt install graphviz, brew install graphviz, "
              f"or https://graphviz.org/download/), or write DOT instead: onex graph "
              f"{args.base} {' '.join(args.capabilities)} -o graph.dot", file=err)
        return 1
    proc = subprocess.run([exe, f"-T{fmt}", "-o", args.output], input=dot, text=True,
                          capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        print(f"error: Graphviz failed (exit {proc.returncode}): {proc.stderr.strip()}",
              file=err)
        return 1
    print(f"wrote {args.output}", file=out)
    return 0


# -- new / demo -------------------------------------------------------------------------------


def _cmd_new(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from onex_compose._scaffold import scaffold_capability

    if args.what != "capability":
        raise _UsageError(f"onex new makes 'capability', got {args.what!r}")
    written = scaffold_capability(args.name, args.target, module=args.module,
                                  node_types=args.node_types, force=args.force,
                                  package=args.package)
    for path in written:
        print(f"created {path}", file=out)
    print(f"next: onex validate {written[0]} && python -m pytest {written[-1]}", file=out)
    return 0


def _cmd_keygen(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import base64
    import re
    import secrets

    if args.id is None:
        import time

        args.id = time.strftime("k%Y%m%dT%H%M%S", time.gmtime())
    if args.count < 1:
        raise _UsageError(f"--count must be at least 1, got {args.count}")
    if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", args.id) is None:
        raise _UsageError(f"--id must be 1-64 of A-Z a-z 0-9 . _ -, got {args.id!r}")
    # the same entry as Encryption.generate_key(), without importing the capability (or
    # cryptography): "<key_id>:<base64url of 32 random bytes>"
    entries = [f"{args.id if args.count == 1 else f'{args.id}-{i + 1}'}:"
               f"{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode('ascii')}"
               for i in range(args.count)]
    print(",".join(entries), file=out)
    return 0


def _cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        module = importlib.import_module("onex_compose._demo")
    except ModuleNotFoundError as exc:
        if exc.name != "onex_compose._demo":
            raise
        print("error: the demo is not available in this build (module onex_compose._demo is "
              "missing). Reinstall onex-compose, or run the examples in README.md.", file=err)
        return 1
    result = module.main(list(args.args))
    return int(result or 0)


# -- parser -----------------------------------------------------------------------------------


def _profile_cli() -> Any:
    """``onex profile`` lives with the profiling capability (imported only when used)."""
    return importlib.import_module("onex_compose.capabilities.profiling._cli")


def _add_compose_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help=f"the node class: {', '.join(BASES)}")
    p.add_argument("capabilities", nargs="*", metavar="CAP",
                   help="capability names (none: explain the base itself)")
    p.add_argument("--exclude", action="append", metavar="CAP[.MEMBER]",
                   help="drop a capability (or hide one member); repeatable")
    p.add_argument("--prefer", action="append", metavar="MEMBER=CAP",
                   help="which capability supplies a clashing public name; repeatable")
    p.add_argument("--alias", action="append", metavar="CAP.MEMBER=NEW",
                   help="expose a capability's member under a new name; repeatable")


def _add_format(p: argparse.ArgumentParser, choices: tuple[str, ...],
                default: str | None) -> None:
    """``--format CHOICE`` plus ``--json``, its short form for ``--format json``."""
    p.add_argument("--format", choices=choices, default=default)
    if "json" in choices:
        p.add_argument("--json", dest="format", action="store_const", const="json",
                       help="short for --format json")


def _add_report_args(p: argparse.ArgumentParser) -> None:
    _add_format(p, ("text", "json"), "text")
    p.add_argument("--strict", action="store_true", help="warnings fail too")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when all pass")
    p.add_argument("--root", metavar="DIR",
                   help="root of the contract tree for subcontract references "
                   "(default: nearest folder with .onex-root, pyproject.toml or .git)")


def _version() -> str:
    """The installed distribution's version (the package's own when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onex-compose")
    except PackageNotFoundError:
        from onex_compose import __version__

        return str(__version__)


def build_parser() -> argparse.ArgumentParser:
    """The ``onex`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="onex", description="onex-compose: build node services out of capability mixins.")
    parser.add_argument("--version", action="version", version=f"onex-compose {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("validate", help="validate mixin and node contracts")
    p.add_argument("paths", nargs="*", metavar="PATH", help="contract files or folders")
    p.add_argument("--installed", action="store_true",
                   help="also validate every contract shipped with this install")
    _add_report_args(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help="run a tool (seed 002: onex run contract_validator)")
    p.add_argument("tool", help=f"the tool: {', '.join(TOOLS)}")
    p.add_argument("--contract", action="append", metavar="PATH",
                   help="contract file or folder; repeatable")
    _add_report_args(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("list", help="list capabilities, aliases and bundles")
    _add_format(p, ("text", "json"), "text")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("explain", help="explain a composition")
    _add_compose_args(p)
    _add_format(p, ("text", "json", "dot"), "text")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("graph", help="dependency graph of a composition (DOT, PNG, SVG)")
    _add_compose_args(p)
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE (format from its extension: .dot, .png, .svg, .pdf)")
    p.add_argument("--format", choices=("dot", "png", "svg", "pdf"), default=None)
    p.set_defaults(func=_cmd_graph)

    p = sub.add_parser("new", help="scaffold a new capability")
    p.add_argument("what", metavar="capability", help="what to create: capability")
    p.add_argument("name", help="the capability name (snake_case)")
    p.add_argument("--target", default=".", metavar="DIR",
                   help="folder to write into (default: current folder)")
    p.add_argument("--module", default=None,
                   help="import path of the new module (default: derived from the folder)")
    p.add_argument("--node-types", nargs="+", default=None, metavar="TYPE",
                   help="applicable node types (default: all four)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--package", action="store_true",
                   help="the package shape (NAME/__init__.py, one module per backend, the contract "
                   "beside them) for a capability with several backends or past ~800 lines")
    p.set_defaults(func=_cmd_new)

    p = sub.add_parser("keygen", help="print a new encryption key entry (for ONEX_ENCRYPTION_KEYS)")
    p.add_argument("--id", default=None, metavar="KEY_ID",
                   help="the key id (default: k<UTC date and time>)")
    p.add_argument("--count", type=int, default=1, metavar="N",
                   help="print N entries, comma-separated (ids KEY_ID-1..N)")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("profile", help="profile a node's process() over JSON-lines inputs")
    _profile_cli().add_arguments(p)
    p.set_defaults(func=lambda a, out, err: _profile_cli().run(a, out, err))

    p = sub.add_parser("demo", help="run the demo")
    p.add_argument("args", nargs="*", help="arguments for the demo")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``onex`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["demo"]:
        # everything after 'demo' belongs to the demo, options included (argparse's REMAINDER
        # would swallow a leading '--flag' as an error)
        arguments = ["demo", "--", *arguments[1:]]
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:  # --help or a usage error: argparse already printed
        return int(exc.code or 0) if isinstance(exc.code, int | type(None)) else 2
    out, err = sys.stdout, sys.stderr
    try:
        return int(args.func(args, out, err))
    except _UsageError as exc:
        print(f"onex {args.command}: error: {exc}", file=err)
        return 2
    except OnexError as exc:
        print(f"error: {exc}", file=err)
        return 1
    except BrokenPipeError:  # `onex list | head`: the reader left; not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:  # pragma: no cover
            pass
        return 0
    except OSError as exc:
        print(f"error: {exc}", file=err)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
