"""The README documents every command, and CI runs exactly the README's commands."""

from __future__ import annotations

import subprocess

from retriever.cli import all_commands
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_readme_documents_every_command():
    for name in all_commands():
        assert f"retriever {name}" in README, name


def test_ci_runs_the_readme_commands_exactly():
    script = REPO / ".ci" / "run"
    out = subprocess.run(
        ["bash", "-c", f"source <(sed -n '/^readme_command()/,/^}}/p' {script}); readme_command test; readme_command main"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out == [
        "pip install -e '.[dev]' && python -m pytest",
        'pip install -e . && retriever index examples/photos && retriever search "a cat"',
    ]
    assert README.count("```\n" + out[0] + "\n```") == 1


def test_every_example_photo_has_a_recorded_source():
    sources = (REPO / "examples" / "photos" / "SOURCES.md").read_text()
    photos = [p.name for p in (REPO / "examples" / "photos").iterdir() if p.suffix != ".md"]
    assert 10 <= len(photos) <= 30
    for name in photos:
        assert f"| {name} |" in sources, name
