"""The contract validator behind ``onex validate`` and ``onex run contract_validator``.

It checks mixin contracts and node contracts (told apart by content: ``mixin_name`` or
``node_type``/``capabilities``/``subcontracts``, then by file name) and reports seed 002's five
checks::

    ✓ YAML syntax valid
    ✓ Schema validation passed
    ✓ All required fields present
    ✓ Node type constraints valid
    ✓ Action definitions complete          (node contracts: Subcontract references resolved)

Every problem is a :class:`~onex_compose._loading.ContractProblem` with its field path, file
and line, sorted under the check it fails. Beyond the schema, a mixin contract's
``<capability>_config`` section is validated by the capability's config model when the
registry knows one (warnings point out fields the section leaves out or whose default
differs); a node contract's capabilities must be known and applicable to its node type.
Validation never raises for bad input: whatever the data, the result is a report.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from onex_compose._contracts import (
    NODE_TYPES,
    ModelMixinContract,
    config_keys,
    problems_from_error,
    unique_problems,
)
from onex_compose._contracts import _capability_of as capability_of
from onex_compose._loading import (
    ContractProblem,
    LineIndex,
    load_yaml,
    load_yaml_text,
    looks_like_yaml_text,
    raise_problems,
)
from onex_compose._node_contracts import (
    ModelContract,
    contract_class_for,
    validation_context,
)
from onex_compose.exceptions import ContractError, did_you_mean

__all__ = [
    "CHECKS",
    "ValidationReport",
    "capability_problems",
    "detect_kind",
    "iter_contract_files",
    "render_reports",
    "validate_contract",
    "validate_data",
    "validate_file",
    "validate_paths",
    "validate_text",
]

CHECKS: dict[str, list[tuple[str, str]]] = {
    "mixin": [
        ("yaml", "YAML syntax valid"),
        ("schema", "Schema validation passed"),
        ("required", "All required fields present"),
        ("node_types", "Node type constraints valid"),
        ("actions", "Action definitions complete"),
    ],
    "node": [
        ("yaml", "YAML syntax valid"),
        ("schema", "Schema validation passed"),
        ("required", "All required fields present"),
        ("node_types", "Node type constraints valid"),
        ("references", "Subcontract references resolved"),
    ],
}

_NODE_KEYS = ("node_type", "capabilities", "subcontracts")
_SNAKE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class ValidationReport:
    """The result of validating one contract.

    Attributes:
        source: the file (or a name for in-memory data).
        kind: ``"mixin"``, ``"node"``, or ``None`` when it could not be told.
        problems: every error and warning found.
        contract: the validated model when there are no errors.
        skipped: why the file was skipped (folder scans skip YAML files that are not
            contracts), else ``None``.
    """

    source: str | None
    kind: str | None = None
    problems: list[ContractProblem] = field(default_factory=list)
    contract: Any = None
    skipped: str | None = None

    @property
    def errors(self) -> list[ContractProblem]:
        """The problems of severity ``error``."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[ContractProblem]:
        """The problems of severity ``warning``."""
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.errors

    def checks(self) -> list[tuple[str, str, bool | None]]:
        """``(id, title, passed)`` for each check of this kind of contract; ``passed`` is
        ``None`` for a check that could not run (see :meth:`unchecked`)."""
        checks = CHECKS.get(self.kind or "mixin", CHECKS["mixin"])
        ids = {c for c, _ in checks}
        failed = {p.check if p.check in ids else "schema" for p in self.errors}
        skipped = self.unchecked()
        return [(cid, title, False if cid in failed else (None if cid in skipped else True))
                for cid, title in checks]

    def unchecked(self) -> dict[str, str]:
        """Checks that could not run, with the reason: everything after a YAML failure or
        after a document that is not a contract mapping; the node-type and action checks of
        a mixin contract whose ``applicable_node_types`` / ``actions`` are missing."""
        checks = [c for c, _ in CHECKS.get(self.kind or "mixin", CHECKS["mixin"])]
        errors = self.errors
        if any(p.check == "yaml" for p in errors):
            return dict.fromkeys(checks[1:], "the YAML could not be read")
        if any(p.check == "schema" and not p.path and p.key is None for p in errors):
            return dict.fromkeys(checks[2:], "not a contract")
        out: dict[str, str] = {}
        missing = {p.key for p in errors if p.check == "required" and not p.path}
        needs = {"node_types": "applicable_node_types", "actions": "actions"} \
            if self.kind != "node" else {"node_types": "node_type"}
        for cid, key in needs.items():
            if key in missing:
                out[cid] = f"'{key}' is missing"
        return out

    def render_text(self, *, header: bool = False) -> str:
        """The report as the validator prints it (seed 002's check lines)."""
        out: list[str] = []
        if header:
            out.append(f"{self.source}:")
        if self.skipped:
            out.append(f"- skipped: {self.skipped}")
            return "\n".join(out)
        checks = CHECKS.get(self.kind or "mixin", CHECKS["mixin"])
        ids = {c for c, _ in checks}
        yaml_failed = any(p.check == "yaml" for p in self.errors)
        unchecked = self.unchecked()
        for cid, title in checks:
            errs = [p for p in self.errors if (p.check if p.check in ids else "schema") == cid]
            if errs:
                out.append(f"✗ {title}")
                out.extend(f"    ✗ {p.render()}" for p in errs)
            elif yaml_failed:
                break  # nothing else could be checked
            elif cid in unchecked:
                out.append(f"- {title}: not checked ({unchecked[cid]})")
            else:
                out.append(f"✓ {title}")
        out.extend(f"⚠ {p.render()}" for p in self.warnings)
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``onex validate --format json``)."""
        return {
            "file": self.source,
            "kind": self.kind,
            "ok": self.ok,
            "skipped": self.skipped,
            "checks": [{"id": c, "name": t, "ok": ok,
                        "status": "not checked" if ok is None else ("passed" if ok else
                                                                    "failed")}
                       for c, t, ok in self.checks()]
            if not self.skipped else [],
            "problems": [p.to_dict() for p in self.problems],
        }

    def raise_for_errors(self) -> None:
        """Raise one :class:`ContractError` listing every error (nothing when valid)."""
        what = {"mixin": "mixin contract", "node": "node contract"}.get(self.kind or "",
                                                                        "contract")
        raise_problems(f"Invalid {what} {self.source or ''}".rstrip(), self.problems,
                       self.source)


def detect_kind(data: Any, filename: str | None = None) -> str | None:
    """Tell a mixin contract from a node contract, by content, then by file name.

    Example:
        >>> detect_kind({"mixin_name": "mixin_x"}), detect_kind({"node_type": "COMPUTE"})
        ('mixin', 'node')
        >>> detect_kind({}, "mixin_caching.yaml"), detect_kind({"a": 1}, "bundles.yaml")
        ('mixin', None)
    """
    if isinstance(data, Mapping):
        if "mixin_name" in data:
            return "mixin"
        if any(k in data for k in _NODE_KEYS):
            return "node"
    name = os.path.basename(filename or "")
    if name.startswith("mixin_") and name.endswith((".yaml", ".yml")):
        return "mixin"
    if "contract" in name and name.endswith((".yaml", ".yml")):
        return "node"
    return None


def _registry(registry: Any) -> Any:
    if registry is not None:
        return registry
    from onex_compose._registry import default_registry

    return default_registry


def _mixin_extras(model: ModelMixinContract, data: Mapping[str, Any], lines: LineIndex | None,
                  source: str | None, registry: Any) -> list[ContractProblem]:
    """Warnings and config-model checks beyond the schema."""
    out: list[ContractProblem] = []

    def line(*path: Any) -> int | None:
        return lines.line_of(path) if lines else None

    for i, action in enumerate(model.actions):
        missing = [k for k in ("required", "timeout_ms") if k not in action.model_fields_set]
        if missing:
            out.append(ContractProblem(
                f"action {action.name!r} does not set {' and '.join(missing)} (defaults: "
                f"required={str(action.required).lower()}, timeout_ms={action.timeout_ms}); "
                "seed 002's schema lists both", ("actions", i), line("actions", i), source,
                "actions", "warning"))
    section = next((k for k in data if isinstance(k, str) and k.endswith("_config")
                    and k != "composition"), model.config_key)
    if model.config is None:
        out.append(ContractProblem(
            f"no {model.config_key} section: list every field of the capability's config "
            "model with its default (recommended by seed 002)", (), None, source, "schema",
            "warning"))
        return out
    out.extend(_config_section_problems(model.capability, section, model.config, lines,
                                        source, registry))
    return out


def _config_section_problems(capability: str, section: str, config: Mapping[str, Any],
                             lines: LineIndex | None, source: str | None, registry: Any, *,
                             warnings: bool = True) -> list[ContractProblem]:
    """The ``<capability>_config`` section checked against the registered config model:
    errors for values the model refuses; warnings for fields left out or whose default
    differs (when ``warnings``)."""
    out: list[ContractProblem] = []

    def line(*path: Any) -> int | None:
        return lines.line_of(path) if lines else None

    reg = _registry(registry)
    spec = None
    try:
        if capability in reg:
            spec = reg.get(capability)
    except Exception:  # an alias or a broken plugin: no registered model to compare with
        spec = None
    config_model = None
    if spec is not None:
        try:
            config_model = spec.config_model
        except Exception as exc:
            if warnings:
                out.append(ContractProblem(
                    f"could not import the config model of {capability!r} "
                    f"({spec.config_ref}) to check {section}: {exc}", (section,),
                    line(section), source, "schema", "warning"))
    if config_model is None:
        return out
    try:
        config_model.model_validate(dict(config))
    except ValidationError as exc:
        for p in problems_from_error(exc, config_model, dict(config)):
            path = (section, *p.path)
            out.append(ContractProblem(
                f"{p.message} (checked against {config_model.__name__})", path,
                line(*path), source, "schema"))
        return out
    if not warnings:
        return out
    from onex_compose.model.subcontracts import SUBCONTRACT_META_FIELDS

    try:
        defaults = config_model().model_dump(mode="json")
    except Exception:  # a model with required fields: nothing to compare
        return out
    for name, default in defaults.items():
        if name in SUBCONTRACT_META_FIELDS:
            continue
        if name not in config:
            out.append(ContractProblem(
                f"{section} does not list {name!r} (default {default!r} in "
                f"{config_model.__name__})", (section,), line(section), source, "schema",
                "warning"))
        elif _jsonish(config[name]) != default:
            out.append(ContractProblem(
                f"{section}.{name} is {config[name]!r} but {config_model.__name__} "
                f"defaults to {default!r}; keep the contract and the model in step",
                (section, name), line(section, name), source, "schema", "warning"))
    return out


def _jsonish(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def capability_problems(contract: ModelContract, registry: Any = None, *,
                        lines: LineIndex | None = None,
                        source: str | None = None) -> list[ContractProblem]:
    """Problems with a node contract's capabilities: unknown names, wrong node type.

    Uses registry metadata only (no capability module is imported).
    """
    reg = _registry(registry)
    node_type = contract.node_type.value

    def line(*path: Any) -> int | None:
        return lines.line_of(path) if lines else None

    out = _capability_name_problems(list(enumerate(contract.capabilities)), node_type, reg,
                                    lines, source)
    try:
        known = reg.names()
    except Exception:  # pragma: no cover - defensive: a broken registry
        known = []
    for entry in contract.subcontracts:
        bundle = reg.aliases.get(entry.capability) if entry.capability in reg else None
        if bundle is not None and len(bundle) > 1:
            out.append(ContractProblem(
                f"subcontract for {entry.capability!r}, a bundle of {', '.join(bundle)}: a "
                "bundle has no configuration of its own; configure each capability under its "
                "own name", entry.location, line(*entry.location), source, "references"))
            continue
        if entry.capability in reg:
            spec = reg.get(entry.capability) if entry.capability not in reg.aliases else None
            if spec is not None and node_type not in spec.applicable_node_types \
                    and entry.node_types is None:
                types = ", ".join(t for t in NODE_TYPES if t in spec.applicable_node_types)
                out.append(ContractProblem(
                    f"Mixin 'mixin_{entry.capability}' not applicable to node type "
                    f"{node_type!r}. Applicable types: [{types}]", entry.location,
                    line(*entry.location), source, "node_types"))
            continue
        out.append(ContractProblem(
            f"subcontract for unknown capability {entry.capability!r}"
            f"{did_you_mean(entry.capability, known)}; known: {', '.join(known) or '(none)'}",
            entry.location, line(*entry.location), source, "references"))
    return out


def _capability_name_problems(names: Sequence[tuple[int, str]], node_type: str | None,
                              reg: Any, lines: LineIndex | None,
                              source: str | None) -> list[ContractProblem]:
    """Unknown capability names, and (when ``node_type`` is known) capabilities that do not
    apply to it; ``names`` are ``(index in the capabilities list, name)`` pairs."""
    out: list[ContractProblem] = []

    def line(*path: Any) -> int | None:
        return lines.line_of(path) if lines else None

    try:
        known = reg.names()
    except Exception:  # pragma: no cover - defensive: a broken registry
        known = []
    for i, name in names:
        expanded, unknown = reg.expand([name])
        if unknown:
            out.append(ContractProblem(
                f"unknown capability {name!r}{did_you_mean(name, known)}; known: "
                f"{', '.join(known) or '(none)'}", ("capabilities", i),
                line("capabilities", i), source, "schema"))
            continue
        if node_type is None:
            continue
        for cap in expanded:
            spec = reg.get(cap)
            if node_type not in spec.applicable_node_types:
                types = ", ".join(t for t in NODE_TYPES if t in spec.applicable_node_types)
                out.append(ContractProblem(
                    f"Mixin 'mixin_{cap}' not applicable to node type {node_type!r}. "
                    f"Applicable types: [{types}]", ("capabilities", i),
                    line("capabilities", i), source, "node_types"))
    return out


def _raw_capability_problems(data: Mapping[str, Any], found: Sequence[ContractProblem],
                             lines: LineIndex | None, source: str | None,
                             registry: Any) -> list[ContractProblem]:
    """Capability-name problems of a node contract whose schema failed (so that one run
    reports them too); entries the schema already complained about are skipped."""
    caps = data.get("capabilities")
    if not isinstance(caps, list):
        return []
    flagged = {p.path[1] for p in found if len(p.path) >= 2 and p.path[0] == "capabilities"}
    names = [(i, c) for i, c in enumerate(caps)
             if isinstance(c, str) and i not in flagged and _SNAKE_NAME.match(c)]
    node_type = data.get("node_type")
    if not (isinstance(node_type, str) and node_type in NODE_TYPES):
        node_type = None
    try:
        return _capability_name_problems(names, node_type, _registry(registry), lines, source)
    except Exception:  # pragma: no cover - defensive: a broken plugin registry
        return []


def _raw_config_problems(data: Mapping[str, Any], found: Sequence[ContractProblem],
                         lines: LineIndex | None, source: str | None,
                         registry: Any) -> list[ContractProblem]:
    """Config-section errors of a mixin contract whose schema failed (reported in the same
    run); nothing when the schema already found a problem inside the section."""
    capability = capability_of(data)
    if capability is None:
        return []
    section = next((k for k in config_keys(data) if k in data), None)
    if section is None or any(p.path[:1] == (section,) for p in found):
        return []
    config = data[section]
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        return []
    try:
        return _config_section_problems(capability, section, config, lines, source,
                                        registry, warnings=False)
    except Exception:  # pragma: no cover - defensive: a broken plugin registry
        return []


def validate_data(data: Any, *, source: str | None = None, lines: LineIndex | None = None,
                  kind: str | None = None, path: str | os.PathLike[str] | None = None,
                  root: str | os.PathLike[str] | None = None,
                  registry: Any = None) -> ValidationReport:
    """Validate contract data (already parsed) and return a report; never raises for bad data.

    Args:
        data: the parsed YAML (or any value).
        source: a name for messages.
        lines: line numbers of ``data`` (from the safe loader).
        kind: ``"mixin"`` or ``"node"``; detected when ``None``.
        path: the file the data came from (node contracts resolve references against it).
        root: the contract tree's root (default: found from ``path``).
        registry: the registry used for capability checks (default: the default registry).

    Example:
        >>> r = validate_data({"mixin_name": "mixin_example",
        ...                    "mixin_version": {"major": 1, "minor": 0, "patch": 0}})
        >>> r.ok, r.errors[0].message
        (False, "'description' field required")
    """
    kind = kind or detect_kind(data, source)
    report = ValidationReport(source, kind)
    if kind is None:
        report.problems.append(ContractProblem(
            "not a contract: a mixin contract has 'mixin_name', a node contract has "
            "'node_type' (and 'capabilities'/'subcontracts')", (), 1 if lines else None,
            source, "schema"))
        return report
    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        report.problems.append(ContractProblem(
            f"a contract is a YAML mapping (key: value lines), got {got}", (),
            1 if lines else None, source, "schema"))
        return report
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        report.problems.extend(ContractProblem(
            f"key {k!r} is not a string; contract keys are names", (), None, source,
            "schema") for k in bad_keys)
        return report
    if kind == "mixin":
        try:
            model = ModelMixinContract.model_validate(data)
        except ValidationError as exc:
            report.problems = unique_problems(problems_from_error(
                exc, ModelMixinContract, data, lines=lines, file=source))
            report.problems.extend(_raw_config_problems(data, report.problems, lines, source,
                                                        registry))
            return report
        report.problems.extend(_mixin_extras(model, data, lines, source, registry))
        report.contract = model
    else:
        cls: type[ModelContract] = ModelContract
        node_type = data.get("node_type")
        if isinstance(node_type, str) and node_type in NODE_TYPES:
            cls = contract_class_for(node_type)
        ctx = validation_context(path, root=root, registry=registry, lines=lines)
        try:
            node = cls.model_validate(data, context=ctx)
        except ValidationError as exc:
            report.problems = unique_problems(problems_from_error(
                exc, cls, data, lines=lines, file=source, root_kind="node"))
            report.problems.extend(_raw_capability_problems(data, report.problems, lines,
                                                            source, registry))
            return report
        except ContractError as exc:  # pragma: no cover - defensive: loader errors escape
            report.problems.extend(ContractProblem(str(p["message"]), (), p.get("line"),
                                                   source, "references") for p in exc.problems)
            return report
        report.problems.extend(capability_problems(node, registry, lines=lines, source=source))
        report.contract = node
    if report.errors:
        report.contract = None
    return report


def validate_text(text: str, *, source: str | None = None, kind: str | None = None,
                  registry: Any = None) -> ValidationReport:
    """Validate contract text (YAML); never raises for bad input."""
    try:
        loaded = load_yaml_text(text, source)
    except ContractError as exc:
        return _load_failure(source, kind, exc)
    return validate_data(loaded.data, source=source, lines=loaded.lines, kind=kind,
                         registry=registry)


def _load_failure(source: str | None, kind: str | None, exc: ContractError) -> ValidationReport:
    report = ValidationReport(source, kind or detect_kind(None, source))
    for p in exc.problems:
        report.problems.append(ContractProblem(
            str(p["message"]), (), p.get("line"), source, "yaml"))
    return report


def validate_file(path: str | os.PathLike[str], *, kind: str | None = None,
                  root: str | os.PathLike[str] | None = None, registry: Any = None,
                  skip_non_contracts: bool = False) -> ValidationReport:
    """Load (safely) and validate one contract file; never raises for bad input.

    Args:
        path: the YAML file.
        kind: ``"mixin"`` or ``"node"``; detected from the content when ``None``.
        root: root of the contract tree for references (default: found from ``path``).
        registry: registry for capability checks.
        skip_non_contracts: return a skipped report for YAML that is not a contract (folder
            scans) instead of an error.
    """
    source = "<YAML text passed as a path>" if looks_like_yaml_text(path) else str(path)
    try:
        loaded = load_yaml(path, source=source)
    except ContractError as exc:
        return _load_failure(source, kind, exc)
    detected = kind or detect_kind(loaded.data, source)
    if detected is None and skip_non_contracts:
        return ValidationReport(source, None, skipped="not a contract (no mixin_name or "
                                "node_type)")
    return validate_data(loaded.data, source=source, lines=loaded.lines, kind=detected,
                         path=path, root=root, registry=registry)


_SKIP_DIRS = {"__pycache__", "node_modules", ".git", ".venv", "venv", ".tox", ".mypy_cache",
              ".pytest_cache", ".ruff_cache", ".hypothesis"}


def iter_contract_files(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Every ``*.yaml``/``*.yml`` file under ``folder`` (sorted; hidden and tool folders skipped)."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS
                             and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith((".yaml", ".yml")) and not name.startswith("."):
                yield Path(dirpath) / name


def validate_paths(paths: Iterable[str | os.PathLike[str]], *,
                   root: str | os.PathLike[str] | None = None,
                   registry: Any = None) -> list[ValidationReport]:
    """Validate files and folders (a folder: every YAML contract in it, recursively)."""
    reports: list[ValidationReport] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            found = False
            for file in iter_contract_files(p):
                found = True
                reports.append(validate_file(file, root=root, registry=registry,
                                             skip_non_contracts=True))
            if not found:
                reports.append(ValidationReport(str(p), None, [ContractProblem(
                    "no YAML files in this folder", (), None, str(p), "yaml")]))
        else:
            reports.append(validate_file(p, root=root, registry=registry))
    return reports


def validate_contract(contract: Any, *, kind: str | None = None,
                      root: str | os.PathLike[str] | None = None,
                      registry: Any = None) -> ValidationReport:
    """Validate a contract file, folder-free path, mapping or model; return the report.

    Example:
        >>> validate_contract({"node_type": "COMPUTE"}).ok
        True
    """
    if isinstance(contract, ModelMixinContract):
        name = contract.mixin_name
        return ValidationReport(name, "mixin", _mixin_extras(
            contract, contract.to_data(), None, name, registry), contract)
    if isinstance(contract, ModelContract):
        name = contract.name or type(contract).__name__
        report = ValidationReport(name, "node", capability_problems(
            contract, registry, source=name), contract)
        if report.errors:
            report.contract = None
        return report
    if isinstance(contract, str | os.PathLike):
        return validate_file(contract, kind=kind, root=root, registry=registry)
    return validate_data(contract, kind=kind, root=root, registry=registry)


def render_reports(reports: Sequence[ValidationReport], fmt: str = "text", *,
                   headers: bool | None = None) -> str:
    """All reports as text (seed 002's lines) or JSON.

    Args:
        reports: the reports.
        fmt: ``"text"`` or ``"json"``.
        headers: name each file and end with a summary line (default: when there are
            several reports); one file alone prints just its check lines.
    """
    if fmt == "json":
        return json.dumps({"ok": all(r.ok for r in reports),
                           "reports": [r.to_dict() for r in reports]}, indent=2)
    checked = [r for r in reports if not r.skipped]
    if headers is None:
        headers = len(reports) > 1
    if not headers and len(reports) == 1 and checked:
        return reports[0].render_text()
    blocks = [r.render_text(header=True) for r in checked]
    bad = sum(1 for r in checked if not r.ok)
    skipped = len(reports) - len(checked)
    summary = f"{len(checked) - bad} contract{'s' if len(checked) - bad != 1 else ''} valid, " \
              f"{bad} invalid"
    if skipped:
        summary += f" ({skipped} YAML file{'s' if skipped != 1 else ''} skipped: not contracts)"
    return "\n\n".join([*blocks, summary])
