"""Safe YAML loading: duplicates, line numbers, size/depth/alias caps, hostile files, confinement."""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import pytest
import yaml

from onex_compose._loading import (
    MAX_DEPTH,
    confine,
    find_root,
    load_yaml,
    load_yaml_text,
)
from onex_compose._validate import validate_file
from onex_compose.exceptions import ContractError

MB = 1024 * 1024


def _peak_growth(fn):
    """Run ``fn`` and return (result or exception, peak traced memory in bytes)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            outcome = fn()
        except Exception as exc:  # the caller checks what came out
            outcome = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return outcome, peak


def _message(exc: ContractError) -> str:
    return " ".join(p["message"] for p in exc.problems)


# -- ordinary loading --------------------------------------------------------------------------


def test_loads_plain_data_with_line_index():
    loaded = load_yaml_text("a: 1\nb:\n  - x\n  - y: 2\n    z: 3\n")
    assert loaded.data == {"a": 1, "b": ["x", {"y": 2, "z": 3}]}
    assert loaded.lines.line_of(("a",)) == 1
    assert loaded.lines.line_of(("b",)) == 2
    assert loaded.lines.line_of(("b", 1)) == 4
    assert loaded.lines.line_of(("b", 1, "z")) == 5
    # a path that does not exist resolves to its nearest ancestor
    assert loaded.lines.line_of(("b", 1, "missing")) == 4


def test_only_standard_tags_are_constructed():
    with pytest.raises(ContractError) as info:
        load_yaml_text("x: !!python/object/apply:os.system ['echo hacked']\n", "evil.yaml")
    assert "could not determine a constructor" in _message(info.value)
    assert info.value.problems[0]["line"] == 1


def test_empty_document_is_none():
    assert load_yaml_text("").data is None
    assert load_yaml_text("# only a comment\n").data is None


def test_duplicate_keys_are_all_reported_with_lines():
    text = "a: 1\nb: 2\na: 3\nnested:\n  k: 1\n  k: 2\n"
    with pytest.raises(ContractError) as info:
        load_yaml_text(text, "dup.yaml")
    problems = info.value.problems
    assert len(problems) == 2
    assert "duplicate key 'a' (first defined on line 1)" in problems[0]["message"]
    assert problems[0]["line"] == 3
    assert "duplicate key 'k' (first defined on line 5)" in problems[1]["message"]
    assert problems[1]["line"] == 6
    assert "dup.yaml:3" in str(info.value)


def test_merge_keys_work_and_may_be_overridden():
    text = "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n"
    assert load_yaml_text(text).data["derived"] == {"x": 1, "y": 3}


def test_syntax_error_names_the_line():
    with pytest.raises(ContractError) as info:
        load_yaml_text("a: 1\nb: [1, 2\nc: 3\n", "broken.yaml")
    assert info.value.problems[0]["line"] is not None
    assert "invalid YAML" in _message(info.value)


def test_several_documents_are_refused():
    with pytest.raises(ContractError, match="several YAML documents"):
        load_yaml_text("a: 1\n---\nb: 2\n")


def test_load_yaml_reads_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("\ufeffname: x\n", "utf-8")  # a BOM is fine
    loaded = load_yaml(path)
    assert loaded.data == {"name": "x"}
    assert loaded.path == path


def test_missing_file_folder_and_fifo(tmp_path):
    with pytest.raises(ContractError, match="file not found"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ContractError, match="is a folder"):
        load_yaml(tmp_path)
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ContractError, match="not a regular file"):
        load_yaml(fifo)  # would block forever if it were opened


def test_device_files_are_refused():
    with pytest.raises(ContractError, match="not a regular file"):
        load_yaml("/dev/zero")


def test_size_cap_is_configurable(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: " + "x" * 100 + "\n")
    with pytest.raises(ContractError, match="more than the 50-byte contract limit"):
        load_yaml(path, max_bytes=50)
    assert load_yaml(path, max_bytes=1000).data["a"] == "x" * 100


# -- hostile files ---------------------------------------------------------------------------


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def _hostile(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.timeout(10)
def test_billion_laughs_is_refused_quickly_and_cheaply(tmp_path):
    path = _hostile(tmp_path, "bomb.yaml", BILLION_LAUGHS.encode())
    outcome, peak = _peak_growth(lambda: load_yaml(path))
    assert isinstance(outcome, ContractError)
    assert "alias bomb" in _message(outcome)
    assert peak < 100 * MB
    report = validate_file(path)
    assert not report.ok and report.errors[0].check == "yaml"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("content", [
    "[" * 10_000 + "]" * 10_000,
    "{a: " * 10_000 + "1" + "}" * 10_000,
    "- " * 10_000 + "x\n",
], ids=["flow-sequences", "flow-mappings", "block-sequences"])
def test_ten_thousand_deep_nesting_is_refused(tmp_path, content):
    path = _hostile(tmp_path, "deep.yaml", content.encode())
    outcome, peak = _peak_growth(lambda: load_yaml(path))
    assert isinstance(outcome, ContractError), outcome
    assert f"nesting deeper than {MAX_DEPTH} levels" in _message(outcome)
    assert peak < 100 * MB


@pytest.mark.timeout(10)
def test_binary_garbage_is_refused(tmp_path):
    garbage = random.Random(1234).randbytes(256 * 1024)
    path = _hostile(tmp_path, "garbage.yaml", garbage)
    outcome, peak = _peak_growth(lambda: load_yaml(path))
    assert isinstance(outcome, ContractError)
    assert "binary data" in _message(outcome) or "not UTF-8" in _message(outcome)
    assert peak < 100 * MB


def test_invalid_utf8_without_nul_names_the_offset(tmp_path):
    path = _hostile(tmp_path, "latin1.yaml", "name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ContractError, match=r"not UTF-8 text: invalid byte 0xe9 at offset 9"):
        load_yaml(path)


def test_control_characters_are_refused_with_a_line():
    with pytest.raises(ContractError) as info:
        load_yaml_text("a: 1\nb: bell\x07\n")
    assert info.value.problems[0]["line"] == 2


@pytest.mark.timeout(10)
def test_a_100_mb_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as fh:
        fh.truncate(100 * MB)  # sparse: 100 MB long, nothing written
    outcome, peak = _peak_growth(lambda: load_yaml(path))
    assert isinstance(outcome, ContractError)
    assert f"file is {100 * MB} bytes, more than the" in _message(outcome)
    assert peak < 100 * MB


@pytest.mark.timeout(10)
def test_a_real_100_mb_file_is_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    chunk = b"key: " + b"v" * (MB - 6) + b"\n"
    with path.open("wb") as fh:
        for _ in range(100):
            fh.write(chunk)
    outcome, peak = _peak_growth(lambda: validate_file(path))
    assert not outcome.ok
    assert "contract limit" in outcome.errors[0].message
    assert peak < 100 * MB


@pytest.mark.timeout(10)
def test_too_many_nodes_is_refused(tmp_path):
    path = _hostile(tmp_path, "wide.yaml", ("[" + "1," * 60_000 + "1]").encode())
    outcome, peak = _peak_growth(lambda: load_yaml(path))
    assert isinstance(outcome, ContractError)
    assert "YAML nodes in one document" in _message(outcome)
    assert peak < 100 * MB


def test_recursive_alias_is_refused():
    with pytest.raises(ContractError, match="recursive alias"):
        load_yaml_text("a: &x [1, *x]\n")


def test_modest_aliases_are_fine():
    text = "defaults: &d {retries: 3}\none: *d\ntwo: *d\n"
    assert load_yaml_text(text).data["two"] == {"retries": 3}


# -- confinement -----------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "project"
    (root / "nodes" / "canary" / "node_a").mkdir(parents=True)
    (root / "mixins").mkdir()
    (root / ".onex-root").touch()
    (root / "mixins" / "mixin_x.yaml").write_text("mixin_name: mixin_x\n")
    (tmp_path / "outside.yaml").write_text("secret: 1\n")
    return root


def test_find_root_uses_the_nearest_marker(tree):
    node = tree / "nodes" / "canary" / "node_a" / "contract.yaml"
    assert find_root(node) == tree.resolve()
    (tree / "nodes" / "pyproject.toml").touch()
    assert find_root(node) == (tree / "nodes").resolve()


def test_find_root_without_marker_is_the_contract_folder(tmp_path):
    folder = tmp_path / "lonely"
    folder.mkdir()
    # tmp_path has no marker, but some ancestor of it might (a checkout): look only below it
    result = find_root(folder / "c.yaml")
    assert result == folder.resolve() or folder.resolve().is_relative_to(result)


def test_relative_reference_inside_the_tree(tree):
    base = tree / "nodes" / "canary"
    assert confine("../../mixins/mixin_x.yaml", base, tree) == (tree / "mixins" /
                                                                "mixin_x.yaml").resolve()


def test_reference_escaping_the_tree_is_refused(tree):
    base = tree / "nodes" / "canary"
    with pytest.raises(ContractError, match="outside the contract tree"):
        confine("../../../outside.yaml", base, tree)


def test_absolute_references(tree):
    base = tree / "nodes"
    inside = str((tree / "mixins" / "mixin_x.yaml").resolve())
    assert confine(inside, base, tree) == Path(inside)
    with pytest.raises(ContractError, match="outside the contract tree"):
        confine(str(tree.parent / "outside.yaml"), base, tree)
    with pytest.raises(ContractError, match="outside the contract tree"):
        confine("/etc/passwd", base, tree)


def test_symlink_cannot_smuggle_a_path_out(tree):
    link = tree / "mixins" / "sneaky.yaml"
    link.symlink_to(tree.parent / "outside.yaml")
    with pytest.raises(ContractError, match="outside the contract tree"):
        confine("mixins/sneaky.yaml", tree, tree)


def test_empty_reference_is_refused(tree):
    with pytest.raises(ContractError, match="non-empty string"):
        confine("  ", tree, tree)


def test_loader_is_a_safe_loader_subclass():
    from onex_compose._loading import _Loader

    assert issubclass(_Loader, yaml.SafeLoader)


@pytest.mark.parametrize("text", ["node_type: COMPUTE\n", "node_type: COMPUTE",
                                  "{node_type: COMPUTE}", "mixin_name: x\n" * 2000])
def test_load_contract_given_yaml_text_says_it_is_text_and_how_to_load_it(text: str) -> None:
    from onex_compose import load_contract

    with pytest.raises(ContractError) as info:
        load_contract(text)
    message = str(info.value)
    assert "file not found" not in message
    assert "looks like YAML text, not a file path" in message
    assert "load_contract(yaml.safe_load(text))" in message
    # the text is not echoed as if it were a file name in the summary line
    assert message.splitlines()[0].startswith("Invalid contract <YAML text passed as a path>")
    # the advice works
    assert load_contract(yaml.safe_load("node_type: COMPUTE\n")).node_type.value == "COMPUTE"


def test_a_missing_file_is_still_reported_as_missing(tmp_path: Path) -> None:
    from onex_compose import load_contract

    with pytest.raises(ContractError, match="file not found"):
        load_contract(str(tmp_path / "nope.yaml"))
