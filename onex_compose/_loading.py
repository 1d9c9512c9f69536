"""Safe YAML loading for contracts: size caps, duplicate keys, alias bombs, line numbers, confinement.

Contracts are data, often written by people other than the one running the node, so loading
one must never run code, never hang and never eat the machine's memory. This module wraps
PyYAML's **pure-Python** ``SafeLoader`` (a subclass of it, so only the standard YAML tags are
constructed, exactly as ``yaml.safe_load`` does) and adds what ``safe_load`` lacks:

* a file size cap (:data:`MAX_BYTES`, checked with ``stat`` before reading, then enforced on the
  read itself), and only regular files (a FIFO or ``/dev/zero`` would block or never end);
* binary garbage refused up front (NUL bytes, invalid UTF-8) with the byte offset;
* a nesting-depth cap (:data:`MAX_DEPTH`; the composer is recursive, so 10,000 nested ``[``
  would otherwise end in ``RecursionError``), a node-count cap (:data:`MAX_NODES`) enforced
  while composing, and an *expanded*-size cap (:data:`MAX_EXPANDED_NODES`) computed over the
  alias graph before anything is constructed, which stops "billion laughs" alias bombs;
  recursive aliases are refused;
* duplicate mapping keys rejected (``safe_load`` keeps the last one silently), all of them
  reported at once; merge keys (``<<: *defaults``) still work and may be overridden;
* a :class:`LineIndex` from data paths (``("actions", 0, "outputs")``) to 1-based line
  numbers, so every later validation problem can name its file and line;
* reference paths confined to the contract's folder tree (:func:`confine`).

Why by hand rather than a library: ``ruamel.yaml`` keeps lines but has no expansion or depth
caps either, and is not a core dependency; the LibYAML-backed ``CSafeLoader`` composes in C
where a depth guard cannot be hooked in. The extra checks cost little: composing a contract
is dominated by PyYAML's scanner.

**The contract tree.** A reference (``path: ../../mixins/mixin_x.yaml``) may point anywhere
inside the tree the contract belongs to and nowhere else. The tree's root is, in order: the
``root=`` given by the caller; else the nearest ancestor folder of the contract that holds
one of :data:`ROOT_MARKERS` (an ``.onex-root`` file, ``pyproject.toml``, ``setup.cfg``,
``setup.py`` or ``.git``), i.e. the project the contract lives in; else the contract's own
folder (strict: without a marker no ``..`` is allowed). Symlinks are resolved before the
check, so a link cannot smuggle a path out of the tree.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from onex_compose.exceptions import ContractError

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_EXPANDED_NODES",
    "MAX_NODES",
    "ROOT_MARKERS",
    "ContractProblem",
    "LineIndex",
    "LoadedYaml",
    "confine",
    "fail",
    "find_root",
    "format_path",
    "load_yaml",
    "load_yaml_text",
    "raise_problems",
]

MAX_BYTES = 1024 * 1024
"""Largest contract file accepted (1 MiB; real contracts are a few KiB)."""
MAX_DEPTH = 64
"""Deepest nesting of mappings/sequences accepted."""
MAX_NODES = 10_000
"""Most YAML nodes (scalars, mappings, sequences) one document may hold before aliases."""
MAX_EXPANDED_NODES = 100_000
"""Most nodes one document may expand to once every alias is followed."""
ROOT_MARKERS = (".onex-root", "pyproject.toml", "setup.cfg", "setup.py", ".git")
"""Files whose presence makes a folder the root of a contract tree."""

_MERGE_TAG = "tag:yaml.org,2002:merge"

PathPart = str | int


def format_path(path: Sequence[PathPart]) -> str:
    """Render a data path the way the validator prints it.

    Example:
        >>> format_path(("actions", 0, "outputs"))
        'actions[0].outputs'
        >>> format_path(())
        ''
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class ContractProblem:
    """One problem found in a contract.

    Attributes:
        message: what is wrong, in the validator's wording (``'description' field required``).
        path: where in the data, as a tuple (``("actions", 0, "outputs")``).
        line: 1-based line in ``file`` (``None`` when unknown).
        file: the file the problem is in (``None`` for in-memory data).
        check: the validator check it belongs to (``"schema"``, ``"required"``, ...).
        severity: ``"error"`` or ``"warning"``.
        key: for an unknown key, the key itself (``path`` is the mapping that holds it).
    """

    message: str
    path: tuple[PathPart, ...] = ()
    line: int | None = None
    file: str | None = None
    check: str = "schema"
    severity: str = "error"
    key: str | None = field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        """``file:line`` (or what is known of it)."""
        if self.file and self.line:
            return f"{self.file}:{self.line}"
        return self.file or (f"line {self.line}" if self.line else "")

    def render(self) -> str:
        """``file:line: path: message``."""
        parts = [p for p in (self.where, format_path(self.path)) if p]
        return ": ".join([*parts, self.message])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (also the entries of :attr:`ContractError.problems`)."""
        return {"path": format_path(self.path), "message": self.message, "line": self.line,
                "file": self.file, "check": self.check, "severity": self.severity}


def raise_problems(summary: str, problems: Sequence[ContractProblem],
                   source: str | None = None) -> None:
    """Raise one :class:`ContractError` listing every error in ``problems`` (warnings dropped).

    Returns normally when ``problems`` holds no error.
    """
    if any(p.severity == "error" for p in problems):
        fail(summary, problems, source)


def fail(summary: str, problems: Sequence[ContractProblem], source: str | None = None) -> NoReturn:
    """Raise one :class:`ContractError` listing the errors in ``problems`` (at least one)."""
    errors = [p for p in problems if p.severity == "error"] or list(problems)
    entries = []
    for p in errors:
        entry = p.to_dict()
        if p.file and p.file != source:
            # a problem in another file (a referenced mixin contract): keep its location
            entry["message"] = p.render()
            entry["line"] = None
            entry["path"] = ""
        entries.append(entry)
    n = len(errors)
    raise ContractError(f"{summary}: {n} problem{'s' if n != 1 else ''}",
                        source=source, problems=entries)


class LineIndex:
    """Maps data paths to the 1-based line where that value (or its key) is written.

    Example:
        >>> idx = load_yaml_text("a: 1\\nb:\\n  - x\\n  - y\\n").lines
        >>> idx.line_of(("b", 1)), idx.line_of(("b", 5, "missing"))
        (4, 2)
    """

    def __init__(self, lines: dict[tuple[PathPart, ...], int] | None = None) -> None:
        self._lines: dict[tuple[PathPart, ...], int] = lines or {}

    def line_of(self, path: Sequence[PathPart]) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        key = tuple(path)
        while True:
            found = self._lines.get(key)
            if found is not None:
                return found
            if not key:
                return None
            key = key[:-1]

    def __len__(self) -> int:
        return len(self._lines)


@dataclass
class LoadedYaml:
    """The result of a safe load: the data, its line index, and where it came from."""

    data: Any
    lines: LineIndex = field(default_factory=LineIndex)
    source: str | None = None
    path: Path | None = None


class _LimitError(yaml.YAMLError):
    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` plus depth/node/alias caps and duplicate-key detection."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self.duplicates: list[tuple[str, int, int]] = []

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        self._depth += 1
        self._nodes += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise _LimitError(f"nesting deeper than {MAX_DEPTH} levels", mark)
        if self._nodes > MAX_NODES:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise _LimitError(f"more than {MAX_NODES} YAML nodes in one document", mark)
        try:
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        own = {id(k) for k, _ in node.value if k.tag != _MERGE_TAG}
        self.flatten_mapping(node)
        mapping: dict[Any, Any] = {}
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    "found an unhashable key", key_node.start_mark) from None
            line = key_node.start_mark.line + 1
            if id(key_node) in own:
                if key in seen:
                    self.duplicates.append((str(key), line, seen[key]))
                seen[key] = line
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def _expanded_size(root: Node) -> int:
    """Nodes ``root`` expands to with every alias followed; refuses recursive aliases.

    Iterative (no recursion) and memoised per node, so an alias bomb costs one visit per
    distinct node.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            on_path.discard(nid)
            total = 1
            for child in _children(node):
                total += sizes[id(child)]
                if total > MAX_EXPANDED_NODES:
                    raise _LimitError(
                        f"document expands to more than {MAX_EXPANDED_NODES} nodes through "
                        "aliases (an alias bomb?); write the values out or use fewer aliases",
                        node.start_mark)
            sizes[nid] = total
            continue
        if nid in sizes:
            continue
        if nid in on_path:
            raise _LimitError("recursive alias (a value that contains itself)", node.start_mark)
        on_path.add(nid)
        stack.append((node, True))
        for child in _children(node):
            cid = id(child)
            if cid in on_path:
                raise _LimitError("recursive alias (a value that contains itself)",
                                  child.start_mark)
            if cid not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: Node) -> Iterator[Node]:
    if isinstance(node, SequenceNode):
        yield from node.value
    elif isinstance(node, MappingNode):
        for k, v in node.value:
            yield k
            yield v


def _index(root: Node) -> LineIndex:
    lines: dict[tuple[PathPart, ...], int] = {(): root.start_mark.line + 1}
    seen: set[int] = set()
    stack: list[tuple[Node, tuple[PathPart, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                lines.setdefault((*path, i), item.start_mark.line + 1)
                stack.append((item, (*path, i)))
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                if isinstance(k, ScalarNode) and k.tag != _MERGE_TAG:
                    sub = (*path, k.value)
                    lines.setdefault(sub, k.start_mark.line + 1)
                    stack.append((v, sub))
    return LineIndex(lines)


def _mark_line(exc: BaseException) -> int | None:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "mark", None) \
        or getattr(exc, "context_mark", None)
    line = getattr(mark, "line", None)
    return line + 1 if isinstance(line, int) else None


def load_yaml_text(text: str, source: str | None = None) -> LoadedYaml:
    """Safely parse one YAML document from text (see the module docstring for the rules).

    Args:
        text: the YAML text.
        source: a name for messages (a file path; default ``"<string>"``).

    Raises:
        ContractError: syntax errors, several documents, duplicate keys, a cap exceeded;
            each problem with its line.

    Example:
        >>> load_yaml_text("mixin_name: mixin_x\\n").data
        {'mixin_name': 'mixin_x'}
        >>> load_yaml_text("a: 1\\na: 2\\n")
        Traceback (most recent call last):
        ...
        onex_compose.exceptions.ContractError: YAML syntax invalid: 1 problem
          - <string>:2: duplicate key 'a' (first defined on line 1); ...
    """
    source = source or "<string>"
    if len(text) > MAX_BYTES:
        fail("YAML syntax invalid", [ContractProblem(
            f"text is {len(text)} characters, more than the {MAX_BYTES}-byte contract limit",
            file=source, check="yaml")], source)
    if "\x00" in text:
        fail("YAML syntax invalid", [ContractProblem(
            f"binary data: NUL character at offset {text.index(chr(0))}; a contract is UTF-8 "
            "text", file=source, check="yaml")], source)
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        fail("YAML syntax invalid", [ContractProblem(
            f"invalid YAML: character #x{exc.character:04x} at position {exc.position} is not "
            "allowed in YAML text", line=line, file=source, check="yaml")], source)
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                return LoadedYaml(None, LineIndex({(): 1}), source)
            _expanded_size(node)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except _LimitError as exc:
        fail("YAML syntax invalid", [ContractProblem(
            f"refused: {exc.message}", line=_mark_line(exc), file=source, check="yaml")],
            source)
    except yaml.YAMLError as exc:
        msg = " ".join(str(exc).split("\n")[:1]) if not hasattr(exc, "problem") else (
            f"{getattr(exc, 'problem', '')}"
            + (f" ({getattr(exc, 'context', '')})" if getattr(exc, "context", None) else ""))
        if "expected a single document" in str(exc):
            msg = "several YAML documents in one contract file (remove the '---' separators)"
        fail("YAML syntax invalid", [ContractProblem(
            f"invalid YAML: {msg.strip() or exc}", line=_mark_line(exc), file=source,
            check="yaml")], source)
    except RecursionError:  # pragma: no cover - the depth cap fires first
        fail("YAML syntax invalid", [ContractProblem(
            "refused: nesting too deep", file=source, check="yaml")], source)
    if loader.duplicates:
        fail("YAML syntax invalid", [ContractProblem(
            f"duplicate key {key!r} (first defined on line {first}); YAML keeps only the last "
            "one, so remove or rename one of them", line=line, file=source, check="yaml")
            for key, line, first in loader.duplicates], source)
    return LoadedYaml(data, _index(node), source)


_YAML_TEXT_HINT = (
    "this looks like YAML text, not a file path: a contract is loaded from a file path, a mapping or a "
    "model. Parse the text first and pass the mapping, e.g. "
    "load_contract(yaml.safe_load(text)), or save it to a .yaml file and pass that path")


def looks_like_yaml_text(path: object) -> bool:
    r"""Whether a string given as a file path is really YAML text (it has a line break, or is a
    ``key: value`` / ``{...}`` document, and names no existing file).

    Example:
        >>> looks_like_yaml_text("node_type: COMPUTE\n"), looks_like_yaml_text("a/b.yaml")
        (True, False)
    """
    if not isinstance(path, str):
        return False
    text = path.strip()
    if not text:
        return False
    if "\n" not in path and not text.startswith("{") and ": " not in text:
        return False
    try:
        return not Path(path).exists()
    except (OSError, ValueError):  # too long for a path, or a NUL byte: not a file name
        return True


def load_yaml(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES,
              source: str | None = None) -> LoadedYaml:
    """Safely load one YAML file (regular file, at most ``max_bytes``, UTF-8).

    Args:
        path: the file.
        max_bytes: size cap (default :data:`MAX_BYTES`).
        source: the name used in messages (default: the path as given).

    Raises:
        ContractError: the file is missing, not a regular file, too large, binary, or not
            valid YAML, or breaks one of the caps.
    """
    p = Path(path)
    name = source or str(path)

    def fail_with(message: str) -> NoReturn:
        fail("Cannot load contract", [ContractProblem(message, file=name, check="yaml")], name)

    if looks_like_yaml_text(path):
        fail_with(_YAML_TEXT_HINT)
    try:
        st = p.stat()
    except FileNotFoundError:
        fail_with(f"file not found: {p}")
    except OSError as exc:
        fail_with(f"cannot read {p}: {exc.strerror or exc}")
    if stat.S_ISDIR(st.st_mode):
        fail_with(f"{p} is a folder, not a contract file")
    if not stat.S_ISREG(st.st_mode):
        fail_with(f"{p} is not a regular file (device, pipe or socket); refusing to read it")
    if st.st_size > max_bytes:
        fail_with(f"file is {st.st_size} bytes, more than the {max_bytes}-byte contract limit "
             "(a contract is a few KiB; is this the right file?)")
    try:
        with p.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        fail_with(f"cannot read {p}: {exc.strerror or exc}")
    if len(raw) > max_bytes:
        fail_with(f"file is more than {max_bytes} bytes, the contract limit")
    if b"\x00" in raw:
        nul = raw.index(b"\x00")
        fail_with(f"binary data: NUL byte at offset {nul}; a contract is UTF-8 text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        fail_with(f"not UTF-8 text: invalid byte 0x{raw[exc.start]:02x} at offset {exc.start}")
    loaded = load_yaml_text(text, name)
    loaded.path = p
    return loaded


def find_root(start: str | os.PathLike[str]) -> Path:
    """The root of the contract tree a file or folder belongs to (see the module docstring).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> (d / ".onex-root").touch(); (d / "nodes").mkdir()
        >>> find_root(d / "nodes" / "contract.yaml") == d.resolve()
        True
    """
    p = Path(start).resolve()
    folder = p if p.is_dir() else p.parent
    for candidate in (folder, *folder.parents):
        if any((candidate / m).exists() for m in ROOT_MARKERS):
            return candidate
    return folder


def confine(reference: str, base_dir: str | os.PathLike[str],
            root: str | os.PathLike[str]) -> Path:
    """Resolve ``reference`` against ``base_dir`` and check it stays inside ``root``.

    Args:
        reference: the path written in the contract (relative to ``base_dir``, or absolute).
        base_dir: the folder of the contract that contains the reference.
        root: the contract tree's root (see :func:`find_root`).

    Returns:
        The resolved absolute path (symlinks followed).

    Raises:
        ContractError: the path leaves the tree.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp()).resolve()
        >>> confine("../../mixins/x.yaml", root / "nodes" / "a", root) == root / "mixins/x.yaml"
        True
    """
    if not isinstance(reference, str) or not reference.strip():
        fail("Invalid reference", [ContractProblem(
            f"reference path must be a non-empty string, got {reference!r}", check="references")])
    root_path = Path(root).resolve()
    target = (Path(base_dir) / reference).resolve()
    if not target.is_relative_to(root_path):
        fail("Invalid reference", [ContractProblem(
            f"path {reference!r} resolves to {target}, outside the contract tree {root_path}; "
            "references must stay inside the tree (its root is the nearest folder with one of "
            f"{', '.join(ROOT_MARKERS)}, or the root= you pass)", check="references")])
    return target
