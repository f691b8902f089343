"""The registered method names, read from the methods package's source without importing it.

Registering a method imports peft (seconds on a small CPU); a misspelt ``--method`` should fail at
once. The names are the first argument of each module's ``register(...)`` calls, read with ``ast``,
so the registry stays the one place that defines them (tests/test_methods.py checks both agree).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path


@cache
def method_names() -> tuple[str, ...]:
    names = []
    for path in sorted((Path(__file__).parent / "methods").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register" and node.args:
                method = node.args[0]
                if isinstance(method, ast.Call) and method.args and isinstance(method.args[0], ast.Constant):
                    names.append(method.args[0].value)
    return tuple(names)
