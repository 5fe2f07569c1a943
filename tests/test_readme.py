"""The command blocks of README.md and docs/ run as written, in a fresh copy of the checkout:

    bash scripts/test.sh tests/test_readme.py              the quick blocks (well under a minute)
    bash scripts/test.sh tests/test_readme.py -m slow      every block a CPU runs offline (many minutes)

A block is run when the line above its ```bash fence is `<!-- runs on CPU: quick -->` or
`<!-- runs on CPU: slow -->`; blocks that need a GPU, a network, a running server or paths of your own carry
no mark. The blocks of one file run in order in one copy (a later block may use what an earlier one
made), with the virtual environment's python first on PATH (as after `source .venv/bin/activate`) and
the Hugging Face hub offline. The copy holds the files git tracks or would track, as a fresh clone of
this working tree would, and .venv linked in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

DOCUMENTS = ["README.md"] + sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))
MARKED = re.compile(r"^<!-- runs on CPU: (quick|slow) -->\n```bash\n(.*?)^```", re.S | re.M)
ANY_MARK = re.compile(r"<!-- runs on CPU:[^>]*-->")


def marked_blocks(document: str) -> list[tuple[str, str]]:
    """(quick|slow, the block's text) for each marked ```bash block of `document`, in order."""
    return MARKED.findall((REPO_ROOT / document).read_text(encoding="utf-8"))


def fresh_copy(dest: Path) -> Path:
    """The checkout's files (tracked, or untracked and not ignored) copied to `dest`, with .venv linked."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / ".venv").symlink_to(Path(sys.prefix))
    return dest


def run_blocks(document: str, kinds: set[str], dest: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    clone = fresh_copy(dest)
    for i, (kind, text) in enumerate(marked_blocks(document)):
        if kind not in kinds:
            continue
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=clone, env=env, capture_output=True,
                              text=True, timeout=3600)
        assert proc.returncode == 0, (f"{document}, block {i + 1} ({kind}) failed with exit code {proc.returncode}:\n"
                                      f"{text}\n--- output ---\n{(proc.stdout + proc.stderr)[-4000:]}")


def test_every_mark_is_on_a_bash_block_and_the_readme_has_both_kinds():
    for document in DOCUMENTS:
        text = (REPO_ROOT / document).read_text(encoding="utf-8")
        assert len(ANY_MARK.findall(text)) == len(marked_blocks(document)), f"{document}: a mark not above ```bash"
    kinds = [kind for kind, _ in marked_blocks("README.md")]
    assert "quick" in kinds and "slow" in kinds


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if any(k == "quick" for k, _ in marked_blocks(d))])
def test_quick_blocks_run_in_a_fresh_copy(document, tmp_path):
    run_blocks(document, {"quick"}, tmp_path / "clone")


@pytest.mark.slow
@pytest.mark.parametrize("document", [d for d in DOCUMENTS if marked_blocks(d)])
def test_every_cpu_block_runs_in_a_fresh_copy(document, tmp_path):
    run_blocks(document, {"quick", "slow"}, tmp_path / "clone")
