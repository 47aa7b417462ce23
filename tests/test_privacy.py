"""An index holds private data (paths, places, captions, text in photos): its folders are 0700 and
its files 0600 whatever the umask, and `status` warns when others can read it."""

from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner

from retriever.cli import main
from tests.conftest import PHOTOS


@pytest.fixture
def loose_umask():
    old = os.umask(0o002)  # what a shared machine may have: everything group- and world-readable
    try:
        yield
    finally:
        os.umask(old)


def test_an_index_is_private_whatever_the_umask(tmp_path, loose_umask):
    home = tmp_path / "h"
    runner = CliRunner()
    for args in (["index", str(PHOTOS), "--model", "offline", "-q"],
                 ["tag", "--labels", "cat,coffee", "-q"],
                 ["optimize"],
                 ["search", "a cat", "--no-daemon"]):
        result = runner.invoke(main, [*args, "--home", str(home)])
        assert result.exit_code == 0, (args, result.output)
    folder = home / "default"
    entries = [folder, *folder.rglob("*")]
    assert len(entries) > 4
    loose = {str(p.relative_to(home)): oct(p.stat().st_mode & 0o777) for p in entries
             if not p.is_symlink() and p.stat().st_mode & 0o077}
    assert loose == {}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    status = runner.invoke(main, ["status", "--home", str(home), "--json"])
    assert status.exit_code == 0 and "warning" not in status.stderr
    # an index made readable by others (or made before this rule): status says so and what to run
    os.chmod(folder, 0o755)
    status = runner.invoke(main, ["status", "--home", str(home)])
    assert status.exit_code == 0
    assert "warning: other users can read this index" in status.stderr and "chmod -R go-rwx" in status.stderr
