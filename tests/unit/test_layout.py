"""The layout docs/layout.md promises: imports flow one way, heavy libraries stay in their one module, modules stay
small, each module has a name of its own, and the map in docs/layout.md names only what exists."""

import ast
import re
from pathlib import Path

import pytest
from support import REPO

PACKAGE = REPO / "harness"

# Each top-level module or subpackage of harness and its layer: a module imports only from lower layers
# (or from inside its own package). Read top to bottom, this is the flow from a grid to a report.
LAYERS = {
    "config": 0,
    "registry": 1,
    "gridinput": 1,  # a grid or search file found and read, --set and --seeds checked
    "gridfile": 2,
    "store": 2,
    "metrics": 2,
    "packing": 3,
    "hardware": 3,
    "data": 3,
    "models": 3,
    "losses": 3,
    "optim": 3,  # the OPTIMIZERS registry
    "rescore": 3,  # metrics rebuilt from stored predictions
    "report": 4,  # reads the store and the metrics only: never torch or ray
    "cam": 4,
    "prepare": 4,
    "checkpoint": 4,
    "recipe": 4,  # what decides a trial's numbers, recorded beside it; deterministic mode
    "train": 5,
    "throughput": 6,  # a trial's step timed on a random batch: bench and the runner's placement
    "bench": 7,
    "reproduce": 7,  # a stored trial re-run from its recipe, and its certificate
    "external": 7,  # `harness evaluate`: trained models on other datasets
    "runner": 8,
    "search": 9,
    "cli": 10,
    "__main__": 11,
}
REPORT_READS = {"config", "registry", "store", "metrics", "rescore", "report"}
# A heavy framework is imported by one part of the package only.
ONLY_IN = {"ray": {"runner"}, "optuna": {"search"}}
# Parts that must stay importable without torch (the report, and what it reads).
NO_TORCH = {"config", "registry", "gridinput", "gridfile", "store", "metrics", "rescore", "report", "packing"}
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _part(path: Path) -> str:
    """The top-level module or subpackage a file belongs to: harness/report/tables.py -> report."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) == 1 else rel.parts[0]


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Absolute module names a file imports (function-level imports too, unless top_level_only)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _harness_parts(names: set[str]) -> set[str]:
    return {n.split(".")[1] for n in names if n.startswith("harness.") and n.split(".")[1] in LAYERS}


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(p) for p in _modules()} - {"__init__"}
    assert parts <= set(LAYERS), f"give {sorted(parts - set(LAYERS))} a layer in LAYERS (and in the README's layout)"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path):
    part = _part(path)
    if part == "__init__":
        return
    deps = _harness_parts(_imports(path, top_level_only=False)) - {part}
    upward = sorted(d for d in deps if LAYERS[d] >= LAYERS[part])
    assert not upward, (
        f"{path.relative_to(PACKAGE)} ({part}, layer {LAYERS[part]}) imports {upward} from its layer or above"
    )
    if part == "report":
        assert deps <= REPORT_READS, (
            f"the report reads the store and the metrics only, not {sorted(deps - REPORT_READS)}"
        )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_heavy_frameworks_stay_in_their_one_part(path):
    part = _part(path)
    tops = {n.split(".")[0] for n in _imports(path, top_level_only=False)}
    for lib, homes in ONLY_IN.items():
        assert lib not in tops or part in homes, f"{path.relative_to(PACKAGE)} imports {lib}; only {sorted(homes)} may"
    if part in NO_TORCH:
        at_top = {n.split(".")[0] for n in _imports(path, top_level_only=True)}
        assert not at_top & {"torch", "torchvision"}, (
            f"{path.relative_to(PACKAGE)} must not import torch at import time"
        )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small_and_say_their_job(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{path.relative_to(PACKAGE)} is over {MAX_LINES} lines: split it"
    doc = ast.get_docstring(ast.parse(text))
    assert path.name in ("__init__.py", "__main__.py") or doc, f"{path.relative_to(PACKAGE)}: open with a docstring"


def test_no_two_modules_share_a_file_name():
    seen: dict[str, list[str]] = {}
    for path in _modules():
        if path.name != "__init__.py":
            seen.setdefault(path.name, []).append(str(path.relative_to(PACKAGE)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}


RAY_KNOB = re.compile(r"(RAY|TUNE)_[A-Z0-9_]+|ray(\.[a-z_]+)+")  # an environment variable, or a logger's name


def test_rays_environment_and_loggers_are_touched_only_by_its_adapter():
    """Ray's knobs change meaning across versions: one module sets them, and its contract test watches it."""
    home = PACKAGE / "runner" / "ray_internals.py"
    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value}"
        for path in _modules()
        if path != home
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and RAY_KNOB.fullmatch(node.value)
    ]
    assert found == []


LAYOUT = REPO / "docs" / "layout.md"


def _tree_entries() -> list[str]:
    """The paths the first column of docs/layout.md's tree blocks names, by indentation (two spaces a level)."""
    paths: list[str] = []
    stack: list[tuple[int, str]] = []
    for block in re.findall(r"```\n(.*?)```", LAYOUT.read_text(), flags=re.S):
        stack.clear()
        for line in block.splitlines():
            entry = re.match(r"( *)([\w./-]+\.py|[\w.-]+/)(?=\s|$)", line)
            if entry is None or len(entry.group(1)) > 8:  # wrapped description lines are indented further
                continue
            depth = len(entry.group(1)) // 2
            stack[:] = [(d, name) for d, name in stack if d < depth]
            paths.append("".join(name for _, name in stack) + entry.group(2))
            if entry.group(2).endswith("/"):
                stack.append((depth, entry.group(2)))
    return paths


def test_the_layout_map_names_only_paths_that_exist():
    entries = _tree_entries()
    assert "harness/store/folder.py" in entries and len(entries) > 40  # the parse works
    assert [p for p in entries if not (REPO / p).exists()] == []
    named = set(re.findall(r"`([\w/]+\.py)`", LAYOUT.read_text()))
    assert [p for p in named if not ((PACKAGE / p).exists() or (REPO / p).exists())] == []


def test_the_path_of_a_request_names_functions_that_exist():
    hops = re.findall(r"`(harness/[\w/]+\.py):([\w.]+)`", LAYOUT.read_text())
    assert len(hops) >= 7
    for path, name in hops:
        tree = ast.parse((REPO / path).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert name.split(".")[-1] in defined, f"docs/layout.md: {path} has no {name}"


# --- functions: short, shallow, one step each ---------------------------------------------------------------

MAX_FUNCTION_LINES = 60
MAX_NESTING = 4
# A level of nesting: a compound statement inside a function body. A nested def or class is no level of its
# own (its body is checked as a function of its own), but what nests inside it is not hidden either.
COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.TryStar, ast.Match)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _nesting(node: ast.AST) -> int:
    """How deep compound statements nest under node, not counting node itself; nested defs are skipped (each is
    measured as a function of its own)."""
    deepest = 0
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (*FUNCTIONS, ast.ClassDef, ast.Lambda)):
            continue
        deepest = max(deepest, _nesting(child) + isinstance(child, COMPOUND))
    return deepest


def _functions() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method in harness/, nested ones too, as ("report/page.py:name", node)."""
    out = []
    for path in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        out += [(f"{rel}:{n.name}", n) for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, FUNCTIONS)]
    return out


def _over_the_limits(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    lines = node.end_lineno - node.lineno + 1
    depth = _nesting(node)
    return [
        *([f"{lines} lines (at most {MAX_FUNCTION_LINES})"] if lines > MAX_FUNCTION_LINES else []),
        *([f"nests {depth} deep (at most {MAX_NESTING})"] if depth > MAX_NESTING else []),
    ]


def test_functions_are_short_and_shallow():
    """No function in harness/ is over 60 lines or nests compound statements more than 4 deep: split it by step,
    each step a function whose name says what it does."""
    over = {name: why for name, node in _functions() if (why := _over_the_limits(node))}
    assert not over, "split by step: " + "; ".join(f"{name}: {', '.join(why)}" for name, why in sorted(over.items()))


def test_the_function_limits_catch_a_long_or_deep_function():
    """The measure itself: a 61-line function and one nested 5 deep are caught, a nested def is measured apart."""
    long = "def f():\n" + "    x = 1\n" * 60
    deep = "def g():\n" + "".join("    " * i + "if x:\n" for i in range(1, 6)) + "    " * 6 + "pass\n"
    inner = (
        "def h():\n    if x:\n        def k():\n            if y:\n                if z:\n                    pass\n"
    )
    (f,), (g,), (h,) = (ast.parse(src).body for src in (long, deep, inner))
    assert _over_the_limits(f) == [f"61 lines (at most {MAX_FUNCTION_LINES})"]
    assert _over_the_limits(g) == [f"nests 5 deep (at most {MAX_NESTING})"]
    assert _nesting(h) == 1 and _nesting(h.body[0].body[0]) == 2
