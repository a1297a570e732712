"""The engine never imports streamlit (CONVENTIONS: one UI helper module outside synapse_core holds
every streamlit call)."""
import ast
from pathlib import Path

import synapse_core

ENGINE = Path(synapse_core.__file__).resolve().parent


def _imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__", "find_spec") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


def test_no_engine_module_imports_streamlit():
    files = sorted(ENGINE.rglob("*.py"))
    assert len(files) > 10  # the walk really found the engine
    offenders = {}
    for path in files:
        found = {m for m in _imported_modules(ast.parse(path.read_text(), str(path)))
                 if m == "streamlit" or m.startswith("streamlit.")}
        if found:
            offenders[str(path.relative_to(ENGINE.parent))] = sorted(found)
    assert offenders == {}


def test_the_walk_catches_every_import_form():
    sources = ["import streamlit as st", "from streamlit import cache_data", "import os, streamlit.runtime",
               "def f():\n    import streamlit\n", "importlib.import_module('streamlit')"]
    for source in sources:
        assert any(m.split(".")[0] == "streamlit" for m in _imported_modules(ast.parse(source))), source
    assert not _imported_modules(ast.parse("from .streamlit_free import x"))
