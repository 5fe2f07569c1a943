"""The leaderboard CSV (alpaca_lib/evaluation/leaderboard.py): read as a spreadsheet re-saves it, refused with
the row to fix when it cannot be read (and then never rewritten), and kept whole by writers that finish at once.

    .venv/bin/python -m pytest -n 0 -q tests/test_leaderboard.py
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import sys
from pathlib import Path

import pytest

from alpaca_lib.evaluation.leaderboard import FIELDS, read_board, record
from conftest import REPO_ROOT, run_script

EVAL_MODEL = str(REPO_ROOT / "eval_model.py")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-learn, on AlpacaEval's own calls


def _row(model: str, win_rate: float, digest: str = "0123456789ab") -> dict:
    return {"model": model, "outputs_sha256": digest, "reference": "base",
            "judge_model": "j", "win_rate": win_rate, "standard_error": 1.5, "n_total": 10, "judge_reliable": True}


def _board(tmp_path: Path) -> str:
    """A two-row board as the project writes it; returns its text."""
    for model, rate in (("first, with a comma", 70.0), ('second "quoted"', 40.0)):
        record(tmp_path / "board.csv", _row(model, rate))
    return (tmp_path / "board.csv").read_text(encoding="utf-8")


def _annotations(tmp_path: Path) -> None:
    rows = [{"instruction": f"task {i}", "output_1": "r" * (10 + i), "generator_1": "base", "output_2": "m" * (5 + 3 * i),
             "generator_2": "tuned", "annotator": "j", "preference": [2.0, 1.0, 2.0][i % 3]} for i in range(12)]
    (tmp_path / "ann.json").write_text(json.dumps(rows))


def _score(tmp_path: Path, expect: int = 0) -> str:
    return run_script([sys.executable, EVAL_MODEL, "score", "--annotations", "ann.json", "--output_dir", "scored",
                       "--leaderboard", "board.csv"], tmp_path, expect=expect)


def _models(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [r["model"] for r in csv.DictReader(f)]


def test_a_board_resaved_by_a_spreadsheet_keeps_its_rows(tmp_path):
    """A UTF-8 byte order mark and CRLF line ends: before the fix, the next run rewrote every earlier row with an
    empty model name (the first column read as "\\ufeffmodel")."""
    text = _board(tmp_path)
    (tmp_path / "board.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    _annotations(tmp_path)
    _score(tmp_path)
    assert _models(tmp_path / "board.csv") == ["first, with a comma", "tuned", 'second "quoted"']  # 70, 66.67, 40
    assert (tmp_path / "board.csv").read_bytes().startswith(b"model,outputs_sha256,")


def _open_quote(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return lines[0] + lines[1].replace('"first, with a comma"', '"first, with a comma') + lines[2]


def _balanced_quote(text: str) -> str:  # a quote opened in row 1 and closed in row 2: csv reads one long cell
    lines = text.splitlines(keepends=True)
    return lines[0] + '"first' + lines[1][len('"first, with a comma"'):] + '"' + lines[2]


@pytest.mark.parametrize("spoil, where_what", [
    (lambda t: t.replace(",70.00,", ",87.5%,"),
     "row 1 (line 2) has win_rate '87.5%'; expected a number such as 87.5 (no % sign)"),
    (lambda t: t.replace("second", "s\udce9cond"),
     "line 3 has bytes that are not UTF-8 (b'\\xe9' at byte 296); save it as UTF-8 CSV"),
    (_open_quote, "row 1 (line 2) is not CSV (',' expected after '\"'): a quote left open takes the rows after it "
                  "into one cell"),
    (_balanced_quote, "row 1 (line 2) has a line break inside a cell (a quote left open takes the rows after it "
                      "into one cell; or a name with a line break in it)"),
    (lambda t: t.replace("model,", "name,", 1),
     "its header (line 1) is ['name', 'outputs_sha256', 'reference', 'judge_model', 'win_rate']; expected the "
     "columns ['model', 'outputs_sha256', 'reference', 'judge_model', 'win_rate'] ..."),
], ids=["percent", "not-utf8", "open-quote", "quote-closed-a-row-later", "header"])
def test_a_board_that_cannot_be_read_is_refused_with_its_row_and_left_as_it_is(tmp_path, spoil, where_what):
    """Before the fix: a traceback ("87.5%", bytes), or every row after an open quote rewritten into one name."""
    spoilt = spoil(_board(tmp_path)).encode("utf-8", "surrogateescape")
    (tmp_path / "board.csv").write_bytes(spoilt)
    _annotations(tmp_path)
    err = _score(tmp_path, expect=1)
    assert err.strip().splitlines() == [
        f"error: --leaderboard board.csv: {where_what}; fix or delete that row (or name another --leaderboard), then "
        "run the command again. The board was left as it is."]
    assert (tmp_path / "board.csv").read_bytes() == spoilt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json", "board.csv"]


def test_judge_refuses_a_board_that_cannot_be_read_and_leaves_it_as_it_is(tmp_path):
    from openai_stub import OpenAIStub, Step, chat_body

    spoilt = _board(tmp_path).replace(",40.00,", ",40%,")
    (tmp_path / "board.csv").write_text(spoilt, encoding="utf-8")
    for name, side in (("model.json", "tuned"), ("ref.json", "base")):
        (tmp_path / name).write_text(json.dumps([{"instruction": f"q{i}", "output": f"{side} {i}", "generator": side}
                                                 for i in range(3)]))
    with OpenAIStub(default=lambda req: Step(body=chat_body("a"))) as stub:
        err = run_script([sys.executable, EVAL_MODEL, "judge", "--model_outputs", "model.json", "--reference_outputs",
                          "ref.json", "--judge_model", "judge-m", "--base_url", stub.base_url, "--output_dir", "judged",
                          "--leaderboard", "board.csv"], tmp_path, expect=1)
    assert err.strip().splitlines()[-1] == (
        "error: --leaderboard board.csv: row 2 (line 3) has win_rate '40%'; expected a number such as 87.5 (no % "
        "sign); fix or delete that row (or name another --leaderboard), then run the command again. The board was "
        "left as it is.")
    assert "Traceback" not in err and (tmp_path / "board.csv").read_text(encoding="utf-8") == spoilt
    assert stub.requests == [] and not (tmp_path / "judged").exists()  # refused before the judge is asked


def _writer(args) -> None:
    board, name, n = args
    for i in range(n):
        record(Path(board), _row(f"{name}-{i}", float(i), digest=f"{name}{i:06d}"))


def test_two_writers_at_once_keep_every_row(tmp_path):
    """Each run reads the board, adds its row and writes it back; without the lock around all three, a row
    written between another run's read and write is lost."""
    board, n = tmp_path / "board.csv", 40
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_writer, [(str(board), "alpha", n), (str(board), "beta", n)])
    assert sorted(_models(board)) == sorted(f"{who}-{i}" for who in ("alpha", "beta") for i in range(n))
    with open(board, newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == FIELDS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.csv"]  # the lock file goes with its holder


def test_rows_without_a_model_name_are_kept(tmp_path):
    """Boards rewritten by the old BOM bug have rows with an empty model: read and kept (their digest tells them
    apart), never refused one by one."""
    board = tmp_path / "board.csv"
    record(board, _row("first", 70.0, digest="aaaaaaaaaaaa"))
    text = board.read_text(encoding="utf-8")
    board.write_text(text.replace("\nfirst,", "\n,", 1), encoding="utf-8")
    record(board, _row("second", 40.0, digest="bbbbbbbbbbbb"))
    assert [(r["model"], r["outputs_sha256"]) for r in read_board(board)] == [("", "aaaaaaaaaaaa"),
                                                                            ("second", "bbbbbbbbbbbb")]
