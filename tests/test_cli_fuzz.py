"""Every option of the commands that read an index, given what a user may mistype: a clear
one-line message and a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from retriever.cli import main
from tests.conftest import PHOTOS

NUMBERS = ["0", "-1", "-0", "1e309", "9" * 40, "nan", "inf", "-inf", "abc", ""]
CASES = (
    [["search", "cat", "-k", v] for v in NUMBERS]
    + [["search", "cat", "--min-score", v] for v in ("nan", "inf", "abc", "2", "-2")]
    + [["search", "cat", "--after", v] for v in ("the day before", "2023-13-45", "99999", "", "2023-02-30")]
    + [["search", "cat", "--before", v] for v in ("tomorrow?", "0000-00-00")]
    + [["search", "cat", "--near", v] for v in ("a,b", "91,0", "0,181", "nan,nan", "1", "", "inf,0")]
    + [["search", "cat", "--near", "48.8,2.3", "--within", v] for v in ("-1", "0", "nan", "inf", "km")]
    + [["search", "cat", "--min-size", v] for v in ("10x", "x10", "0", "-5", "1e3", "10x20x30", "big")]
    + [["search", "cat", "--in", ""], ["search", "cat", "--format", " "]]
    + [["search", q] for q in ("nan*cat", "1e309*cat", "-", "0*cat", "- dog", "image:/no/such.jpg")]
    + [["similar", p] for p in ("/no/such/photo.jpg", str(PHOTOS), "/dev/null", str(PHOTOS / "SOURCES.md"))]
    + [["search", "cat", "--index", v] for v in ("../escape", "a/b", "", ".", "no-such-index")]
    + [["status", "--index", v] for v in ("../x", "no-such-index")]
    + [["index", p, "--home", "{home}", "--index", "fuzz"] for p in ("/no/such/folder", "")]
    + [["index", str(PHOTOS), "--home", "{home}", "--index", "fuzz", "--batch-size", v] for v in ("0", "-1", "nan")]
    + [["index", str(PHOTOS), "--home", "{home}", "--index", "fuzz", "--workers", v] for v in ("-1", "x")]
    + [["duplicates", "--threshold", v] for v in ("nan", "-1", "2", "x")]
    + [["tags", "--index", "no-such-index"], ["errors", "--index", "no-such-index"]]
    + [["remove", "", "--home", "{home}"], ["remove", " ", "--home", "{home}"]]
)


@pytest.mark.parametrize("args", CASES, ids=lambda a: " ".join(a)[:60])
def test_a_bad_value_is_one_clear_line(args, offline_index, tmp_path):
    home = str(offline_index.folder.parent)
    args = [a.replace("{home}", str(tmp_path / "h")) for a in args]
    if "--home" not in args:
        args = [*args, "--home", home]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0, (args, result.output)
    assert "Traceback" not in result.output and not isinstance(result.exception, (AssertionError,)), args
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: {type(result.exception).__name__}: {result.exception}")
    message = [line for line in result.output.splitlines() if line.strip()]
    assert message and message[-1].startswith(("Error:", "error:")), (args, result.output)
