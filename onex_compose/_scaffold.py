"""``onex new capability NAME``: scaffold what seed 002 walks through by hand.

Writes three files into a target folder (default: the current one):

* ``mixin_<name>.yaml``: the YAML mixin contract (every field of seed 002's schema, a
  ``<name>_config`` section listing every config field with its default, and a
  ``composition`` section naming the module, mixin class and config model);
* ``<module>.py``: the Pydantic config model, the Protocol, the facility and the mixin, following
  docs/writing-capabilities.md (no ``__init__``, empty ``__slots__``, a ``setup_<name>`` hook
  that accepts a model, a dict or ``None``, a ``facility`` default);
* ``test_<name>.py``: tests that validate the contract, compare its config section with the
  model, and compose a node in a private registry registered from the contract.

With ``package=True`` (``onex new capability NAME --package``) it writes the package shape of a
capability with more than one backend or past roughly 800 lines: a folder ``<name>/`` holding
``__init__.py`` (config model, Protocol, mixin; the public names), ``_memory.py`` (the
in-process backend of the facility; add one module per backend) and the contract
``mixin_<name>.yaml`` beside them, plus ``test_<name>.py`` in the target folder.

The result validates (``onex validate``) and its tests pass (``python -m pytest``) as written;
then the user edits the behaviour. Templates are plain ``str.format`` text: a template engine
would be one more dependency for three small files.
"""

from __future__ import annotations

import importlib
import keyword
import os
import re
import sys
from pathlib import Path

from onex_compose._contracts import NODE_TYPES, check_node_type
from onex_compose.exceptions import ConfigurationError

__all__ = ["scaffold_capability"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_RESERVED = {"start", "stop", "aclose", "process", "contract", "node_id", "node_type", "serve",
             "metrics", "health_check", "capability_config", "explain"}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _check_name(name: str) -> None:
    if not _NAME.match(name) or name.endswith("_"):
        raise ConfigurationError(
            f"capability name {name!r} must be snake_case: lowercase letters, digits and "
            "underscores, starting with a letter (e.g. 'audit_trail')")
    if keyword.iskeyword(name):
        raise ConfigurationError(f"capability name {name!r} is a Python keyword; choose another")
    if name in _RESERVED or name.startswith(("setup_", "start_", "close_")):
        raise ConfigurationError(
            f"capability name {name!r} would clash with a node attribute (the facility is "
            f"exposed as self.{name}); choose another name")


def _check_free(name: str) -> None:
    """Refuse a name the default registry already knows (built-in or plugin capability, alias
    or bundle): the validator would check the new contract against that capability's config
    model, and composing by that name would not reach the new mixin."""
    from onex_compose._registry import default_registry

    try:
        taken = name in default_registry
        aliases = dict(default_registry.aliases)
    except Exception:  # pragma: no cover - a broken plugin must not block scaffolding
        return
    if not taken:
        return
    if name in aliases:
        targets = aliases[name]
        what = (f"an alias of {targets[0]!r}" if len(targets) == 1
                else f"a bundle of {', '.join(targets)}")
    else:
        what = "a registered capability"
    raise ConfigurationError(
        f"capability name {name!r} is taken: it is {what} ('onex list' shows every name). "
        f"Choose another name, e.g. 'my_{name}'")


def _package_of(folder: Path) -> str | None:
    """The dotted package a folder is, when it is a package (has ``__init__.py``)."""
    parts: list[str] = []
    current = folder
    while (current / "__init__.py").exists():
        parts.append(current.name)
        current = current.parent
    return ".".join(reversed(parts)) or None


def _default_module(name: str, target: Path) -> tuple[str, bool]:
    """``(module, builtin)``: the import path the new module will have."""
    try:
        contracts_dir = importlib.import_module("onex_compose.capabilities").CONTRACTS_DIR
    except ImportError:  # pragma: no cover - the package always ships it
        contracts_dir = None
    if contracts_dir is not None and target.resolve() == Path(contracts_dir).resolve():
        return f"onex_compose.capabilities.{name}", True
    package = _package_of(target.resolve())
    base = name if name not in sys.stdlib_module_names else f"{name}_capability"
    return (f"{package}.{base}" if package else base), False


_CONTRACT = '''\
# The YAML mixin contract of the {name} capability (seed 002's schema).
# Validate it with: onex validate {contract_file}
mixin_name: "mixin_{name}"
mixin_version:
  major: 0
  minor: 1
  patch: 0
description: "{title}: labels values passed through apply(); replace this with what {name} does"
applicable_node_types: [{node_types}]

actions:
  - name: "apply"
    description: "Apply the {name} capability to one value"
    inputs: ["value"]
    outputs: ["apply_result"]
    required: true
    timeout_ms: 1000
  - name: "describe"
    description: "Report the capability's configuration and call count"
    inputs: []
    outputs: ["description"]
    required: false
    timeout_ms: 100

{name}_config:
  enabled: true
  label: "{name}"

output_models:
  apply_result:
    label: "string"
    value: "object"
  description:
    enabled: "boolean"
    label: "string"
    calls: "integer"

dependencies:
  - name: "{name}"
    type: "capability"
    description: "Provides the {name} facility (self.{name})"
  - name: "{name}_protocol"
    type: "protocol"
    description: "apply(value) and describe()"

requires_dependencies: []

composition:{module_line}
  mixin_class: "Mixin{camel}"
  config_model: "{camel}Config"
'''

_MODULE = '''\
"""The {name} capability: {title}.

Generated by ``onex new capability {name}``; edit the behaviour, keep the rules of
docs/writing-capabilities.md:

* the config model lists every key of the contract's ``{name}_config`` section, with the
  same defaults;
* the mixin defines no ``__init__`` and keeps ``__slots__ = ()``;
* it builds its state in ``setup_{name}`` and exposes it as ``self.{name}``;
* add ``async def start_{name}(self)`` and ``async def close_{name}(self)`` when it opens
  resources.

Example:
    >>> cfg = {camel}Config(label="demo")
    >>> {camel}(cfg).apply(1)
    {{'label': 'demo', 'value': 1}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from onex_compose import coerce_config, facility

__all__ = [{all_names}]


class {camel}Config(BaseModel):
    """The subcontract: every key of the YAML ``{name}_config`` section, same defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    label: str = "{name}"


class {camel}Protocol(Protocol):
    """What ``self.{name}`` offers (the contract's actions)."""

    def apply(self, value: Any) -> Any: ...

    def describe(self) -> dict[str, Any]: ...


class {camel}:
    """The {name} facility: labels values while enabled and counts the calls."""

    def __init__(self, config: {camel}Config) -> None:
        self.config = config
        self.calls = 0

    def apply(self, value: Any) -> Any:
        """Return ``{{"label": ..., "value": value}}`` (``value`` unchanged when disabled)."""
        if not self.config.enabled:
            return value
        self.calls += 1
        return {{"label": self.config.label, "value": value}}

    def describe(self) -> dict[str, Any]:
        """The configuration and the number of labelled values."""
        return {{"enabled": self.config.enabled, "label": self.config.label,
                "calls": self.calls}}


class Mixin{camel}:
    """Adds ``self.{name}`` (a :class:`{camel}`) to a node.

    Example:
        >>> from onex_compose import NodeCompute
        >>> class Node(NodeCompute, Mixin{camel}):  # doctest: +SKIP
        ...     pass
    """

    __onex_capability__ = "{name}"
    __slots__ = ()

    def setup_{name}(self, config: {camel}Config | Mapping[str, Any] | None = None) -> None:
        """Build the facility from validated configuration (model, dict or None)."""
        cfg = coerce_config({camel}Config, config, "{name}")
        self.{name} = {camel}(cfg)

    @facility
    def {name}(self) -> {camel}:
        """The default facility, when setup never ran."""
        return {camel}({camel}Config())
'''

_FACILITY_START = "\n\nclass {camel}:\n"
_FACILITY_END = "\n\nclass Mixin{camel}:\n"


def _split_module_template() -> tuple[str, str]:
    """``(package __init__, backend module)`` templates cut from :data:`_MODULE`."""
    start, end = _MODULE.index(_FACILITY_START), _MODULE.index(_FACILITY_END)
    facility = _MODULE[start:end]
    init = _MODULE[:start] + _MODULE[end:]
    init = init.replace(
        "from onex_compose import coerce_config, facility\n",
        "from onex_compose import coerce_config, facility\n\n"
        "from ._memory import {camel}\n")
    init = init.replace(
        "* it builds its state in ``setup_{name}`` and exposes it as ``self.{name}``;\n",
        "* it builds its state in ``setup_{name}`` and exposes it as ``self.{name}``;\n"
        "* one module per backend (``_memory.py`` here; add ``_redis.py`` and a ``backend``\n"
        "  config field when it gets a shared store), the contract beside them;\n")
    backend = (
        '"""The in-process backend of the {name} capability (one module per backend)."""\n\n'
        "from __future__ import annotations\n\n"
        "from typing import TYPE_CHECKING, Any\n\n"
        "if TYPE_CHECKING:\n"
        "    from . import {camel}Config\n\n"
        '__all__ = ["{camel}"]\n' + facility)
    return init, backend


_PACKAGE_INIT, _PACKAGE_BACKEND = _split_module_template()

_TEST = '''\
"""Tests of the {name} capability (generated by ``onex new capability {name}``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from onex_compose import ConfigurationError, {base}, Registry, compose
from onex_compose.model.contracts import register_contract, validate_contract

from {module} import {camel}Config

CONTRACT = {contract_expr}


@pytest.fixture
def registry() -> Registry:
    """A private registry holding the capability, registered from its YAML contract."""
    reg = Registry(name="test-{name}")
    register_contract(CONTRACT, registry=reg)
    return reg


def test_contract_validates(registry: Registry) -> None:
    report = validate_contract(CONTRACT, registry=registry)
    assert report.ok, report.render_text()
    assert not report.warnings, report.render_text()


def test_config_section_matches_model() -> None:
    section = yaml.safe_load(CONTRACT.read_text("utf-8"))["{name}_config"]
    assert section == {camel}Config().model_dump(mode="json")


def test_composed_node_uses_its_configuration(registry: Registry) -> None:
    service = compose({base}, ["{name}"], registry=registry)
    node = service(capability_config={{"{name}": {{"label": "custom"}}}})
    assert node.{name}.apply(41) == {{"label": "custom", "value": 41}}
    assert node.{name}.describe() == {{"enabled": True, "label": "custom", "calls": 1}}


def test_defaults_and_disabled(registry: Registry) -> None:
    service = compose({base}, ["{name}"], registry=registry)
    assert service().{name}.apply(1) == {{"label": "{name}", "value": 1}}
    off = service(capability_config={{"{name}": {{"enabled": False}}}})
    assert off.{name}.apply(1) == 1


def test_unknown_config_key_is_rejected(registry: Registry) -> None:
    service = compose({base}, ["{name}"], registry=registry)
    with pytest.raises(ConfigurationError, match="lable"):
        service(capability_config={{"{name}": {{"lable": "typo"}}}})


def test_async_lifecycle(registry: Registry) -> None:
    service = compose({base}, ["{name}"], registry=registry)

    async def run() -> object:
        async with service() as node:
            return node.{name}.apply("x")

    assert asyncio.run(run()) == {{"label": "{name}", "value": "x"}}
'''


def scaffold_capability(name: str, target: str | os.PathLike[str] = ".", *,
                        module: str | None = None, node_types: list[str] | None = None,
                        force: bool = False, package: bool = False) -> list[Path]:
    """Write a new capability's contract, module and test into ``target``.

    Args:
        name: the capability name (snake_case).
        target: the folder to write into (created if missing).
        module: the import path of the new module or package (default: ``<name>``, inside the
            folder's package if it is one; ``onex_compose.capabilities.<name>`` in the built-in
            folder).
        node_types: applicable node types (default: all four).
        force: overwrite existing files.
        package: write the package shape (``<name>/__init__.py``, ``<name>/_memory.py``,
            ``<name>/mixin_<name>.yaml``) for a capability with more than one backend or past
            roughly 800 lines.

    Returns:
        The written paths: contract, module, test (package shape: contract, ``__init__.py``,
        ``_memory.py``, test).

    Raises:
        ConfigurationError: a bad name (or one the default registry already knows), module or
            node type.
        FileExistsError: a file exists already (pass ``force=True`` to overwrite).

    Example:
        >>> import tempfile
        >>> paths = scaffold_capability("audit_trail", tempfile.mkdtemp())
        >>> [p.name for p in paths]
        ['mixin_audit_trail.yaml', 'audit_trail.py', 'test_audit_trail.py']
    """
    _check_name(name)
    _check_free(name)
    folder = Path(target)
    types = list(node_types or NODE_TYPES)
    try:
        types = [check_node_type(t) for t in types]
    except ValueError as exc:
        raise ConfigurationError(f"--node-types: {exc}") from None
    builtin = False
    if module is None:
        module, builtin = _default_module(name, folder)
    elif not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module):
        raise ConfigurationError(f"module {module!r} is not a dotted Python module path")
    leaf = module.rsplit(".", 1)[-1]
    camel = _camel(name)
    if package:
        home = folder / leaf
        files = {
            home / f"mixin_{name}.yaml": _CONTRACT,
            home / "__init__.py": _PACKAGE_INIT,
            home / "_memory.py": _PACKAGE_BACKEND,
            folder / f"test_{name}.py": _TEST,
        }
        contract_expr = f'Path(__file__).parent / "{leaf}" / "mixin_{name}.yaml"'
    else:
        files = {
            folder / f"mixin_{name}.yaml": _CONTRACT,
            folder / f"{leaf}.py": _MODULE,
            folder / f"test_{name}.py": _TEST,
        }
        contract_expr = f'Path(__file__).with_name("mixin_{name}.yaml")'
    existing = [str(p) for p in files if p.exists()]
    if existing and not force:
        raise FileExistsError(
            f"would overwrite {', '.join(existing)}; pass --force (force=True) to replace them")
    title = name.replace("_", " ").capitalize() + " capability"
    values = {
        "name": name, "camel": camel, "title": title, "module": module,
        "node_types": ", ".join(f'"{t}"' for t in types),
        "contract_file": f"mixin_{name}.yaml",
        "base": "Node" + types[0].capitalize(),
        "module_line": "" if builtin else f'\n  module: "{module}"',
        "contract_expr": contract_expr,
        "all_names": ", ".join(f'"{n}"' for n in sorted(
            [camel, f"{camel}Config", f"{camel}Protocol", f"Mixin{camel}"])),
    }
    written = []
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values), "utf-8")
        written.append(path)
    return written
