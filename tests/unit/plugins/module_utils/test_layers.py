"""The module utilities keep their layering: each says "layer N: may import X, Y" in its docstring,
imports only those siblings, and only from lower layers (so there is no cycle)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

MODULE_UTILS = Path(__file__).resolve().parents[4] / "plugins" / "module_utils"
# The list may go on over lines that start with a module name.
LAYER_RE = re.compile(r"^layer (?P<layer>\d+): may import (?P<allowed>.*(?:\n_.*)*)$", re.MULTILINE)
MODULES = sorted(path.stem for path in MODULE_UTILS.glob("_*.py"))


def declared(module: str) -> tuple:
    doc = ast.get_docstring(ast.parse((MODULE_UTILS / f"{module}.py").read_text()))
    match = LAYER_RE.search(doc or "")
    assert match, f"{module}: no 'layer N: may import ...' line in the docstring"
    allowed = set(re.findall(r"_\w+", match.group("allowed")))
    return int(match.group("layer")), allowed


def imported(module: str) -> set:
    tree = ast.parse((MODULE_UTILS / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 1 or not (node.module or "").startswith("ansible"), (
                f"{module} imports {node.module}: module utilities import each other relatively and never Ansible"
            )
            if node.level == 1:
                found.update([node.module] if node.module else [alias.name for alias in node.names])
    return found


@pytest.mark.parametrize("module", MODULES)
def test_imports_are_declared_and_from_lower_layers(module):
    layer, allowed = declared(module)
    for sibling in imported(module):
        assert sibling in allowed, f"{module} imports {sibling}, which its docstring does not allow"
        assert declared(sibling)[0] < layer, f"{module} (layer {layer}) imports {sibling} of a layer not below"
