"""The shape of the package: imports flow one way, the library never imports the CLI, modules stay
small, and importing imgtune leaves the process as it found it."""

import ast
import subprocess
import sys
from pathlib import Path

import imgtune

PACKAGE = Path(imgtune.__file__).parent
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
SHORT_FUNCTIONS = ("tuning/recipe.py", "serve/")  # the training loop and the server read top to bottom


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def imports_of(path: Path) -> set[str]:
    """Every imgtune module this file imports, at the top or inside a function, resolved to a module."""
    modules = {module_name(p) for p in library_files()}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
        elif isinstance(node, ast.ImportFrom) and node.level:
            package = module_name(path).split(".")
            package = package if path.name == "__init__.py" else package[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
            continue
        else:
            continue
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            found.add(candidate if candidate in modules else base)
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) - {module_name(p)} for p in library_files()}


def test_no_import_cycles():
    graph = import_graph()
    # a package's __init__ that only documents is not an edge; one that imports its modules is
    done, active, cycles = set(), [], []

    def visit(node):
        if node in active:
            cycles.append(active[active.index(node) :] + [node])
            return
        if node in done:
            return
        active.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        active.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert not cycles, cycles[:3]


def test_the_library_never_imports_the_cli():
    offenders = {
        m: sorted(i for i in deps if i.startswith("imgtune.cli"))
        for m, deps in import_graph().items()
        if not m.startswith("imgtune.cli")
    }
    assert not {m: d for m, d in offenders.items() if d}


def test_files_and_functions_stay_small():
    too_long = [
        f"{p.relative_to(PACKAGE)}: {n}"
        for p in library_files()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    ]
    assert not too_long
    long_functions = []
    for path in library_files():
        relative = str(path.relative_to(PACKAGE))
        if not relative.startswith(SHORT_FUNCTIONS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{relative}:{node.name} ({length} lines)")
    assert not long_functions


def test_the_checker_sees_real_edges():
    """The graph the tests above judge is not empty: a known edge and a known non-edge."""
    graph = import_graph()
    assert "imgtune.data.splits" in graph["imgtune.tuning.recipe"]
    assert "imgtune.tuning.methods.base" in graph["imgtune.tuning.methods.lora"]
    assert "imgtune.cli.common" in graph["imgtune.cli.train"]


IMPORT_CHANGES_NOTHING = """
import logging, os, sys, warnings

def snapshot():
    torch = sys.modules.get("torch")
    loggers = {name: (lg.level, tuple(lg.handlers), lg.propagate)
               for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    return {"env": dict(os.environ), "threads": torch.get_num_threads() if torch else None,
            "filters": list(warnings.filters), "showwarning": warnings.showwarning, "loggers": loggers,
            "root": (logging.root.level, tuple(logging.root.handlers))}

def compare(before, after):
    for key in before:
        if key == "loggers":  # loggers created since are new, not changed
            changed = [n for n, v in before[key].items() if after[key].get(n) != v]
            assert not changed, ("loggers changed", changed)
        else:
            assert before[key] == after[key], (key, before[key], after[key])
    ours = [n for n in logging.root.manager.loggerDict if n.startswith("imgtune")]
    assert all(not logging.getLogger(n).handlers for n in ours), "the library configured its own logging"

# 1. `import imgtune` on its own: nothing at all changes
before = {k: v for k, v in snapshot().items() if k != "threads"}
import imgtune
compare(before, {k: v for k, v in snapshot().items() if k != "threads"})
assert "torch" not in sys.modules

# 2. every stage of the library, after the libraries it builds on: imgtune adds no change of its own
import accelerate, datasets, fastapi, matplotlib, peft, sklearn, torch, torchvision, transformers  # noqa
before = snapshot()
import imgtune.compare.runner, imgtune.data.loading, imgtune.inference.evaluate, imgtune.inference.export
import imgtune.serve.app, imgtune.tuning.recipe, imgtune.demo
compare(before, snapshot())
"""


def test_importing_the_library_changes_nothing_in_the_process():
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_CHANGES_NOTHING], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
