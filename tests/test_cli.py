"""The CLI through click's CliRunner, and once as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from retriever.cli import all_commands, main
from tests.conftest import REPO, copy_photos


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()

    def invoke(*args, **kwargs):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return invoke


@pytest.fixture
def indexed(tmp_path, run, tiny_clip):
    col = copy_photos(tmp_path / "col")
    home = tmp_path / "h"
    result = run("index", col, "--home", home, "--model", tiny_clip["config"], "--pretrained", tiny_clip["pt"])
    assert result.exit_code == 0, result.output
    return col, home


def test_every_command_has_help(run):
    result = run("--help")
    assert result.exit_code == 0
    for name, command in all_commands().items():
        assert command.help and len(command.help) > 30, name
        assert name in result.output
        sub = run(name, "--help")
        assert sub.exit_code == 0 and "Usage:" in sub.output
        for param in command.params:
            if isinstance(param, __import__("click").Option):
                assert param.help, f"{name} {param.opts} has no help"


def test_command_list_matches_the_commands():
    """`retriever --help` lists the commands without importing them: its summaries and module map
    must say what the commands themselves say."""
    from retriever.cli import MODULES, SUMMARIES, summary_command

    commands = all_commands()
    assert set(commands) == set(MODULES) == set(SUMMARIES)
    for name, command in commands.items():
        assert command.name == name and command.callback.__module__ == f"retriever.cli.{MODULES[name]}"
        for limit in (20, 45, 60, 80, 200):
            assert summary_command(name).get_short_help_str(limit) == command.get_short_help_str(limit), name
    # every module's commands are in the map
    import importlib

    for module in set(MODULES.values()):
        for command in importlib.import_module(f"retriever.cli.{module}").COMMANDS:
            assert MODULES.get(command.name) == module, command.name


def test_help_imports_no_command_module():
    import subprocess
    import sys

    code = ("import sys; from retriever.cli import main\n"
            "try: main(['--help'])\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('retriever.cli.')), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip() == "[]" and "similar" in out.stdout


def test_index_search_similar_status_errors(tmp_path, run, indexed):
    col, home = indexed
    (col / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = run("index", col, "--home", home, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    n = len([p for p in col.iterdir()]) - 1
    assert (summary["unchanged"], summary["failed"], summary["images"], summary["vectors"]) == (n, 1, n, n)

    hits = [json.loads(line) for line in run("search", "a cat", "--home", home, "--json", "-k", 5).stdout.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all({"score", "id", "path", "width", "height", "format", "taken_at", "camera_make"} <= set(h) for h in hits)
    assert hits == sorted(hits, key=lambda h: -h["score"])

    human = run("search", "a cat", "--home", home, "-k", 3).stdout.splitlines()
    assert len(human) == 3 and human[0].split()[0] == "1" and human[0].split()[-1] == hits[0]["path"]
    assert run("search", "a cat", "--home", home, "--paths", "-k", 2).stdout == f"{hits[0]['path']}\n{hits[1]['path']}\n"
    assert run("search", "a cat", "--home", home, "-0", "-k", 2).stdout == f"{hits[0]['path']}\0{hits[1]['path']}\0"

    query = col / "chelsea.png"
    similar = [json.loads(x) for x in run("similar", query, "--home", home, "--json", "-k", 50).stdout.splitlines()]
    assert len(similar) == n - 1 and str(query) not in {h["path"] for h in similar}

    status = json.loads(run("status", "--home", home, "--json").stdout)
    assert (status["images"], status["vectors"], status["failed"], status["dim"]) == (n, n, 1, 32)
    assert status["model_id"].startswith("open_clip/retriever-tiny-test/file-")
    assert status["last_run"]["summary"]["failed"] == 1
    text = run("status", "--home", home).stdout
    assert "images     %d" % n in text and "vectors    %d" % n in text

    errors = [json.loads(x) for x in run("errors", "--home", home, "--json").stdout.splitlines()]
    assert [os.path.basename(e["path"]) for e in errors] == ["broken.jpg"] and errors[0]["error"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["search", "a cat"], "run `retriever index PATH` first"),
        (["status", "--index", "nope"], "no index 'nope'"),
        (["index", "/no/such/folder"], "no such file or folder"),
        (["index", "{photos}", "--model", "ViT-B-99", "--pretrained", "x.pt"], "unknown model"),
        (["index", "{photos}", "--model", "ViT-B-32", "--pretrained", "/no/weights.safetensors"], "weights file not found"),
        (["search", "x", "--index", "../escape"], "invalid index name"),
    ],
)
def test_errors_are_one_line_and_nonzero(run, photos, tmp_path, args, message):
    args = [a.replace("{photos}", str(photos)) for a in args]
    result = run(*args, "--home", tmp_path / "empty-home")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "empty-home" / "default").exists()  # a failed create leaves nothing behind


def test_existing_index_refuses_another_model_and_bad_query_images(run, indexed, tmp_path):
    col, home = indexed
    result = run("index", col, "--home", home, "--model", "offline")
    assert result.exit_code == 1 and "was built with" in result.stderr and "--index" in result.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    result = run("similar", bad, "--home", home)
    assert result.exit_code == 1 and "cannot use" in result.stderr
    result = run("similar", tmp_path / "missing.jpg", "--home", home)
    assert result.exit_code == 1 and "no such image" in result.stderr
    result = run("search", "  ", "--home", home)
    assert result.exit_code == 1 and "empty query" in result.stderr


def test_a_second_writer_fails_at_once(run, indexed):
    from retriever.index import Index

    col, home = indexed
    holder = Index.open(home, "default")
    holder.acquire_lock()
    try:
        result = run("index", col, "--home", home)
        assert result.exit_code == 1 and "is being written by pid" in result.stderr
    finally:
        holder.close()


def test_real_subprocess(indexed, tmp_path):
    col, home = indexed
    env = {**os.environ, "RETRIEVER_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    # The tiny architecture's config is registered again from the path stored in the catalog.
    proc = subprocess.run(
        [sys.executable, "-m", "retriever", "search", "a cup of coffee", "--json", "-k", "3"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len([json.loads(x) for x in proc.stdout.splitlines()]) == 3
    proc = subprocess.run([sys.executable, "-m", "retriever", "status"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0 and "retriever-tiny-test" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "retriever", "search", "x", "--index", "missing"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_help_does_not_import_heavy_packages():
    code = (
        "import sys; from click.testing import CliRunner; from retriever.cli import main; "
        "CliRunner().invoke(main, ['--help']); CliRunner().invoke(main, ['search', '--help']); "
        "heavy = [m for m in ('torch', 'open_clip', 'faiss', 'transformers', 'sqlalchemy') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == ""


def test_models_lists_offline_and_open_clip_architectures(run):
    rows = [json.loads(line) for line in run("models", "--json").stdout.splitlines()]
    by_name = {r["name"]: r for r in rows}
    assert rows[0]["name"] == "offline"
    assert "laion2b_s34b_b79k" in by_name["ViT-B-32"]["pretrained"]
    assert len(rows) > 100


def test_progress_is_plain_log_lines_when_not_a_terminal(tmp_path, run, tiny_clip):
    col = copy_photos(tmp_path / "col", ["chelsea.png", "coffee.jpg", "rocket.jpg"])
    result = run("index", col, "--home", tmp_path / "h", "--model", tiny_clip["config"], "--pretrained", tiny_clip["pt"])
    assert result.exit_code == 0
    lines = result.stderr.splitlines()
    assert any(line.startswith("indexed 3/3 (100%), 0 failed,") and "img/s, ETA" in line for line in lines)
    assert "\r" not in result.stderr  # no bar redraws in a log
    assert "indexed 3 (added 3, updated 0), moved 0, unchanged 0, removed 0, failed 0" in result.stderr
    assert "loading the model" in result.stderr
    again = run("index", col, "--home", tmp_path / "h")
    assert "indexed 0 (added 0" in again.stderr and "loading" not in again.stderr  # nothing to read
    from PIL import Image

    Image.open(col / "coffee.jpg").resize((100, 80)).save(col / "new.jpg")
    quiet = run("index", col, "--home", tmp_path / "h", "-q")
    assert quiet.stderr.count("\n") == 2 and "loading" not in quiet.stderr  # only the summary


def test_remove_drops_files_and_folders(run, indexed):
    col, home = indexed
    n = len(list(col.iterdir()))
    result = run("remove", col / "chelsea.png", col / "nope.jpg", "--home", home)
    assert result.exit_code == 0 and "not in the index" in result.stderr
    status = json.loads(run("status", "--home", home, "--json").stdout)
    assert status["images"] == status["vectors"] == n - 1
    paths = run("search", "a cat", "--home", home, "--paths", "-k", 50).stdout.splitlines()
    assert str(col / "chelsea.png") not in paths and len(paths) == n - 1
    out = json.loads(run("remove", col, "--home", home, "--json").stdout)
    assert out == {"removed": n - 1, "images": 0, "vectors": 0}
