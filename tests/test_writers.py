"""What the commands' writers leave on disk: file permissions, `~` in path flags, full disks.

    .venv/bin/python -m pytest tests/test_writers.py -q
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_follow_the_umask(tmp_path, umask, expected):
    """Files written atomically (through a private temporary file) get what a plain open would give them."""
    items = [{"instruction": "Name a color.", "input": "", "output": "Blue."}]
    (tmp_path / "regen.json").write_text(json.dumps(items))
    proc = subprocess.run([sys.executable, "-m", "generate_instruction", "to_alpaca", "--input_path",
                           str(tmp_path / "regen.json"), "--output_path", str(tmp_path / "out" / "alpaca.json")],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
                          preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "alpaca.json").read_text()) == items
    assert _mode(tmp_path / "out" / "alpaca.json") == expected
    assert _mode(tmp_path / "out") == 0o777 & ~umask
