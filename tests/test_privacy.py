"""An index holds private data (paths, places, captions, text in photos): its folders are 0700 and
its files 0600 whatever the umask, and `status` warns when others can read it."""

from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner

from retriever.cli import main
from tests.conftest import PHOTOS, copy_photos
from tests.test_files import checked_folder, is_root, run_as_nobody


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



# What another user meets in an index, tried in a child process as nobody (see run_as_nobody in
# tests/test_files.py): each "list:FOLDER" and "read:FILE" must be a PermissionError, each
# "reach:PATH" must not be (os.stat: the folders above it let it through, so a denial after it comes
# from the file's own mode). Positive controls first: the home folder lists, a photo reads.
READ_ANOTHER_USERS_INDEX = """
    home, photo, *attempts = sys.argv[1:]
    assert "default" in os.listdir(home) and open(photo, "rb").read(2) == b"\\xff\\xd8"
    denied = []
    for attempt in attempts:
        how, path = attempt.split(":", 1)
        if how == "reach":
            os.stat(path)
            continue
        try:
            os.listdir(path) if how == "list" else open(path, "rb").close()
        except PermissionError:
            denied.append(os.path.basename(path))
        else:
            raise AssertionError(f"another user could {how} {path}")
    print("denied", denied)
"""


def test_another_user_cannot_read_an_index(tmp_path, loose_umask, offline_encoder):
    """The modes hold against another user: the index folder cannot be listed nor its catalog
    read; and with its folders made searchable by all (a careless chmod), every file still
    refuses. Needs root, to be another user."""
    from retriever.encoders import ModelSpec
    from retriever.index import Index
    from retriever.indexer import run_index

    if not is_root():
        pytest.skip("needs a second user to read this user's index: runs where the tests run as root (CI)")
    with checked_folder(tmp_path) as shared:
        photos = copy_photos(shared / "photos", ["coffee.jpg"])
        home = shared / "home"
        with Index.create(home, "default", ModelSpec(name="offline"), offline_encoder.model_id,
                          offline_encoder.dim) as index:
            index.acquire_lock()
            run_index(index, offline_encoder, [str(photos)])
            index.release_lock()
        home.chmod(0o755)  # open to others: what is checked is the index's own modes
        folder = home / "default"
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        assert folder / "catalog.db" in files
        controls = [str(home), str(photos / "coffee.jpg")]
        out = run_as_nobody(READ_ANOTHER_USERS_INDEX, *controls, f"list:{folder}", f"read:{folder / 'catalog.db'}")
        assert "denied ['default', 'catalog.db']" in out
        for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
            sub.chmod(0o711)
        out = run_as_nobody(READ_ANOTHER_USERS_INDEX, *controls, *(a for f in files for a in (f"reach:{f}", f"read:{f}")))
        assert f"denied {[f.name for f in files]}" in out
