"""The public Python API (retriever.open, Collection): the README's example runs, and it answers
as the command line does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import retriever
from retriever.cli import main
from tests.conftest import PHOTOS, REPO


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    return re.search(r"<!-- python-api -->\n```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path):
    env = {**os.environ, "RETRIEVER_HOME": str(tmp_path), "RETRIEVER_NO_DAEMON": "1"}
    proc = subprocess.run([sys.executable, "-c", readme_example()], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "15 indexed, 0 failed"
    assert lines[1].startswith("1 ") and lines[1].endswith("examples/photos/chelsea.png")
    assert lines[-1].startswith("15 photos;") and ".png" in lines[-1] and ".jpg" not in lines[-1]
    assert proc.stderr == ""  # the library prints nothing
    assert (tmp_path / "api-demo" / "catalog.db").exists()


def test_search_and_similar_answer_as_the_command_line(offline_copy):
    home = offline_copy
    cli = CliRunner().invoke(main, ["search", "a cup of coffee", "--home", str(home), "--json", "-k", "5",
                                    "--after", "2000", "--no-daemon"])
    assert cli.exit_code == 0, cli.output
    expected = [json.loads(line) for line in cli.stdout.splitlines()]
    with retriever.open(home=home) as photos:
        hits = photos.search("a cup of coffee", k=5, after="2000")
        assert [h.as_dict() for h in hits] == expected
        like = photos.similar(str(PHOTOS / "coffee.jpg"), k=3)
        cli_like = CliRunner().invoke(main, ["similar", str(PHOTOS / "coffee.jpg"), "--home", str(home), "--paths",
                                             "-k", "3", "--no-daemon"])
        assert [h.path for h in like] == cli_like.stdout.splitlines()
        assert str(PHOTOS / "coffee.jpg") not in [h.path for h in like]
        assert photos.status()["images"] == 15


def test_filters_and_the_query_language_as_keywords(offline_copy):
    with retriever.open(home=offline_copy) as photos:
        pngs = photos.search("a cat", k=20, formats=["png"])
        assert pngs and all(Path(h.path).suffix == ".png" for h in pngs)
        assert photos.search("a cat", k=1)[0].path.endswith("chelsea.png")
        # a string is read as a search box reads it: a phrase minus the same phrase points nowhere
        with pytest.raises(retriever.RetrieverError, match="cancel out"):
            photos.search("a cat on a sofa - a cat on a sofa")
        with pytest.raises(retriever.RetrieverError, match="no such image"):
            photos.similar(str(offline_copy / "missing.jpg"))
        with pytest.raises(retriever.RetrieverError):
            photos.search("a cat", after="not a date")


def test_a_read_only_collection_refuses_to_index(offline_copy):
    with retriever.open(home=offline_copy) as photos:
        with pytest.raises(retriever.ReadOnlyError, match="writable=True"):
            photos.index([str(PHOTOS)])


def test_a_missing_index_is_a_typed_error(tmp_path):
    with pytest.raises(retriever.IndexNotFoundError):
        retriever.open(home=tmp_path, index="nothing-here")


def test_the_public_names_resolve_and_import_retriever_stays_light():
    for name in retriever.__all__:
        assert getattr(retriever, name) is not None, name
    code = ("import sys, retriever; heavy = [m for m in ('click', 'numpy', 'sqlalchemy', 'faiss', 'torch') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    with pytest.raises(AttributeError):
        retriever.not_a_name  # noqa: B018
