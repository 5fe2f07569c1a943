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
