"""Issue 10's "done when": the four data capabilities together.

database, serialization, validation and encryption are listed and their contracts validate; one
node composes all four and ``explain()`` says why each capability is there; composing them (and
building a node that never touches a backend) imports neither SQLAlchemy nor cryptography.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from onex_compose import NodeEffect, compose, default_registry, explain
from onex_compose._cli import main as onex_main
from onex_compose._manifest import contract_paths
from onex_compose._validate import validate_file

DATA = ("database", "serialization", "validation", "encryption")


def test_the_four_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert onex_main(["list", "--format", "json"]) == 0
    listed = {c["name"] for c in json.loads(capsys.readouterr().out)["capabilities"]}
    assert set(DATA) <= listed
    assert set(DATA) <= set(default_registry.names())


@pytest.mark.parametrize("name", DATA)
def test_their_contracts_validate(name: str) -> None:
    (path,) = [p for p in contract_paths() if p.name == f"mixin_{name}.yaml"]
    report = validate_file(path)
    assert report.ok, report


def test_one_node_composes_all_four_and_explain_says_why() -> None:
    cls = compose(NodeEffect, list(DATA))
    caps = {c["name"]: c for c in explain(cls).to_dict()["capabilities"]}
    for name in DATA:
        assert caps[name]["why"] == "requested"
    # metrics is pulled in, and explain names every capability that requires it
    assert caps["metrics"]["why"].startswith("required by")
    assert set(DATA) <= set(caps["metrics"]["required_by"])
    # validation guards process(); the other three add facilities, no guard
    assert "validation" in explain(cls).to_dict()["pipeline"]
    node = cls(capability_config={"encryption": {"allow_ephemeral_key": True}})
    for facility in ("db", "serializer", "validator", "crypto"):
        assert getattr(node, facility) is not None


def test_composing_imports_neither_sqlalchemy_nor_cryptography() -> None:
    code = textwrap.dedent("""
        import sys
        from onex_compose import NodeEffect, compose
        cls = compose(NodeEffect, ["database", "serialization", "validation", "encryption"])
        node = cls(capability_config={"encryption": {"allow_ephemeral_key": True}})
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("sqlalchemy", "cryptography", "aiosqlite", "asyncpg"))
        print(",".join(heavy))
    """)
    env = {k: v for k, v in os.environ.items() if k != "ONEX_ENCRYPTION_KEYS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, check=True)
    assert out.stdout.strip() == "", f"composing imported: {out.stdout.strip()}"
