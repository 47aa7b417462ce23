"""Walking a collection and fingerprints."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from retriever import files
from retriever.errors import RetrieverError
from retriever.files import (
    NON_UNICODE_PREFIX,
    fingerprint_bytes,
    fingerprint_file,
    path_from_text,
    path_to_text,
    walk,
)
from tests.conftest import REPO


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_walk_finds_images_recursively_and_skips_hidden_and_litter(tmp_path):
    for rel in ["a.jpg", "sub/b.PNG", "sub/deep/c.webp", "notes.txt", ".hidden.jpg", ".cache/d.jpg",
                "@eaDir/e.jpg", "sub/._f.jpg", "Thumbs.db", "x.tiff", "y.gif", "z.bmp"]:
        touch(tmp_path / rel)
    found = sorted(e.path[len(str(tmp_path)) + 1:] for e in walk([tmp_path]))
    assert found == ["a.jpg", "sub/b.PNG", "sub/deep/c.webp", "x.tiff", "y.gif", "z.bmp"]
    with_hidden = {e.path[len(str(tmp_path)) + 1:] for e in walk([tmp_path], include_hidden=True)}
    assert {".hidden.jpg", ".cache/d.jpg", "@eaDir/e.jpg", "sub/._f.jpg"} <= with_hidden


def test_exclude_globs_and_single_files(tmp_path):
    touch(tmp_path / "keep.jpg")
    touch(tmp_path / "raw/skip.jpg")
    touch(tmp_path / "tmp_1.jpg")
    found = {e.path for e in walk([tmp_path], exclude=["*/raw", "tmp_*"])}
    assert found == {str(tmp_path / "keep.jpg")}
    assert [e.path for e in walk([tmp_path / "raw" / "skip.jpg"])] == [str(tmp_path / "raw/skip.jpg")]


def test_entries_carry_size_and_mtime(tmp_path):
    p = touch(tmp_path / "a.jpg", b"12345")
    (entry,) = walk([tmp_path])
    assert entry.size == 5 and entry.mtime_ns == p.stat().st_mtime_ns


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(RetrieverError, match="no such file or folder"):
        list(walk([tmp_path / "nope"]))


def test_symlink_loops_are_not_followed(tmp_path):
    touch(tmp_path / "a/img.jpg")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")
    assert [e.path for e in walk([tmp_path])] == [str(tmp_path / "a/img.jpg")]


def test_fingerprint_is_blake2b_of_the_whole_file(tmp_path):
    data = b"head" + b"\0" * (3 << 20) + b"tail"  # differs only past the first megabytes
    p = touch(tmp_path / "a.jpg", data)
    expected = hashlib.blake2b(data, digest_size=16).hexdigest()
    assert fingerprint_file(p) == fingerprint_bytes(data) == expected
    assert fingerprint_bytes(data[:-1] + b"X") != expected


# --- links, odd names, unreadable and vanishing files --------------------------------------------


def rel(root, entries):
    return sorted(os.path.relpath(e.path, root) for e in entries)


def test_symlinked_folders_are_followed_once(tmp_path):
    outside = tmp_path / "outside"
    touch(outside / "x.jpg")
    touch(outside / "deep/y.png")
    root = tmp_path / "root"
    touch(root / "a/img.jpg")
    (root / "a/up").symlink_to(root)  # a loop through the parent
    (root / "link1").symlink_to(outside)
    (root / "link2").symlink_to(outside)  # a second way into the same folder
    assert rel(root, walk([root])) == ["a/img.jpg", "link1/deep/y.png", "link1/x.jpg"]


def test_a_folder_reached_directly_and_by_link_keeps_its_real_path(tmp_path):
    touch(tmp_path / "zeta/img.jpg")
    (tmp_path / "alpha").symlink_to(tmp_path / "zeta")  # sorts first, but is a link
    (tmp_path / "beta.jpg").symlink_to(tmp_path / "zeta/img.jpg")
    assert rel(tmp_path, walk([tmp_path])) == ["zeta/img.jpg"]


def test_linked_files_hard_links_and_dangling_links(tmp_path):
    touch(tmp_path / "outside/o.jpg")
    root = tmp_path / "root"
    touch(root / "a.jpg")
    os.link(root / "a.jpg", root / "b.jpg")  # the same file twice: yielded once
    (root / "o.jpg").symlink_to(tmp_path / "outside/o.jpg")  # the link's own path, the target's stat
    (root / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    entries = list(walk([root]))
    assert rel(root, entries) == ["a.jpg", "o.jpg"]
    assert entries[1].size == 1 and entries[1].path == str(root / "o.jpg")
    assert [e.path for e in walk([root / "o.jpg"])] == [str(root / "o.jpg")]  # a linked file as a root
    with pytest.raises(RetrieverError, match="no such file or folder"):
        list(walk([root / "dangling.jpg"]))


def test_only_regular_files_are_yielded(tmp_path):
    touch(tmp_path / "folder.jpg/inside.jpg")  # a folder named like an image is walked, not yielded
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block the indexer
    assert rel(tmp_path, walk([tmp_path])) == ["folder.jpg/inside.jpg"]


def test_new_suffixes_are_walked(tmp_path):
    for name in ("a.heic", "b.HEIF", "c.avif", "d.CR2", "e.nef", "f.arw", "g.dng", "h.raf", "i.orf", "j.rw2", "k.mp4"):
        touch(tmp_path / name)
    assert len(list(walk([tmp_path]))) == 11  # videos too (sampled frames, see test_video.py)


def test_odd_names_are_yielded_and_open(tmp_path):
    names = ["with space.jpg", "quote's \"x\".jpg", "new\nline.jpg", "ünï 写真.jpg", "-dash.jpg", "back\\slash.jpg"]
    for name in names:
        touch(tmp_path / name, name.encode())
    entries = list(walk([tmp_path]))
    assert sorted(os.path.basename(e.path) for e in entries) == sorted(names)
    for e in entries:
        with open(e.path, "rb") as f:
            assert f.read() == os.path.basename(e.path).encode()


def non_utf8_file(folder) -> str | None:
    """A file whose name is not valid UTF-8, as the walker's str (surrogate escapes); None where the
    filesystem refuses such names."""
    raw = os.path.join(os.fsencode(folder), b"caf\xe9 \xff.jpg")
    try:
        with open(raw, "wb") as f:
            f.write(b"latin-1")
    except OSError:
        return None
    return os.fsdecode(raw)


def test_non_utf8_names_survive_the_walk_and_a_sqlite_round_trip(tmp_path):
    from sqlalchemy import (
        Column,
        Integer,
        MetaData,
        Table,
        Text,
        create_engine,
        insert,
        select,
    )
    from sqlalchemy.exc import StatementError
    from sqlalchemy.types import TypeDecorator

    path = non_utf8_file(tmp_path)
    if path is None:
        pytest.skip("this filesystem only takes UTF-8 names")
    (entry,) = walk([tmp_path])
    assert entry.path == path and "\udce9" in path

    class PathText(TypeDecorator):  # what catalog.py's path column needs
        impl, cache_ok = Text, True

        def process_bind_param(self, value, dialect):
            return None if value is None else path_to_text(value)

        def process_result_value(self, value, dialect):
            return None if value is None else path_from_text(value)

    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    meta = MetaData()
    plain = Table("plain", meta, Column("id", Integer, primary_key=True), Column("path", Text))
    typed = Table("typed", meta, Column("id", Integer, primary_key=True), Column("path", PathText, unique=True))
    meta.create_all(engine)
    with engine.begin() as conn, pytest.raises((StatementError, UnicodeEncodeError)):  # why the catalog needs PathText
        conn.execute(insert(plain).values(path=entry.path))
    with engine.begin() as conn:
        conn.execute(insert(typed).values(path=entry.path))
    with engine.connect() as conn:
        stored = conn.execute(select(typed.c.path).where(typed.c.path == entry.path)).scalar_one()
        raw_text = conn.exec_driver_sql("SELECT path FROM typed").scalar_one()
    assert stored == entry.path
    assert raw_text == NON_UNICODE_PREFIX + str(tmp_path) + "/caf\\xe9 \\xff.jpg"  # readable in sqlite3
    with open(stored, "rb") as f:
        assert f.read() == b"latin-1"


@pytest.mark.parametrize(
    "path",
    ["/photos/a.jpg", "/photos/é 写真.jpg", "/a\\b/c.jpg", "/caf\udce9.jpg", "/x\\xe9\udcff\\\\.jpg",
     NON_UNICODE_PREFIX + "/odd", "C:\\lone \ud800 surrogate.jpg", ""],
)
def test_path_text_mapping_is_exact(path):
    text = path_to_text(path)
    text.encode("utf-8")  # always storable
    assert path_from_text(text) == path
    ordinary = not any(0xD800 <= ord(ch) <= 0xDFFF for ch in path) and not path.startswith(NON_UNICODE_PREFIX)
    assert (text == path) == ordinary  # ordinary paths are stored as they are


def test_unreadable_files_are_yielded_and_unlistable_folders_reported(tmp_path, monkeypatch):
    touch(tmp_path / "locked.jpg")
    os.chmod(tmp_path / "locked.jpg", 0)  # the indexer records "cannot read: Permission denied"
    touch(tmp_path / "secret/hidden.jpg")
    touch(tmp_path / "z.jpg")
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(path) == "secret":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(files.os, "scandir", scandir)
    errors = []
    found = rel(tmp_path, walk([tmp_path], on_error=lambda p, e: errors.append((p, e.strerror))))
    assert found == ["locked.jpg", "z.jpg"]
    assert errors == [(str(tmp_path / "secret"), "Permission denied")]
    assert rel(tmp_path, walk([tmp_path])) == ["locked.jpg", "z.jpg"]  # on_error is optional


# The same check as the test below, for a child process run as another user (see run_as_nobody).
WALK_AN_UNREADABLE_FOLDER = """
    from retriever.files import walk
    folder = sys.argv[1]
    secret = os.path.join(folder, "secret")
    try:
        os.listdir(secret)
        raise SystemExit("permissions do not apply to this user either")
    except PermissionError:
        pass
    errors = []
    found = sorted(os.path.relpath(e.path, folder) for e in walk([folder], on_error=lambda p, e: errors.append(p)))
    assert found == ["ok.jpg"], found
    assert errors == [secret], errors
    print("walked", found, errors)
"""


def test_a_really_unreadable_folder_is_skipped(checked_tmp):
    touch(checked_tmp / "secret/x.jpg")
    touch(checked_tmp / "ok.jpg")
    os.chmod(checked_tmp / "secret", 0)
    try:
        if is_root():  # permissions do not apply to root: the walk runs as another user
            out = run_as_nobody(WALK_AN_UNREADABLE_FOLDER, str(checked_tmp))
            assert f"walked ['ok.jpg'] [{str(checked_tmp / 'secret')!r}]" in out
            return
        try:
            os.listdir(checked_tmp / "secret")
            pytest.skip("permissions do not apply to this user (it lists a folder of mode 000)")
        except PermissionError:
            pass
        errors = []
        assert rel(checked_tmp, walk([checked_tmp], on_error=lambda p, e: errors.append(p))) == ["ok.jpg"]
        assert errors == [str(checked_tmp / "secret")]
    finally:
        os.chmod(checked_tmp / "secret", 0o755)


def test_files_and_folders_vanishing_during_the_walk_are_skipped(tmp_path, monkeypatch):
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "gone.jpg")
    touch(tmp_path / "gone_dir/x.jpg")
    real_scandir = os.scandir

    class Listing:  # lists the folder, then deletes entries before the walker looks at them
        def __init__(self, path):
            with real_scandir(path) as it:
                self.entries = list(it)
            if os.path.exists(tmp_path / "gone.jpg"):
                os.remove(tmp_path / "gone.jpg")
                os.remove(tmp_path / "gone_dir/x.jpg")
                os.rmdir(tmp_path / "gone_dir")

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(files.os, "scandir", Listing)
    errors = []
    assert rel(tmp_path, walk([tmp_path], on_error=lambda p, e: errors.append(p))) == ["a.jpg"]
    assert errors == []  # vanishing is not an error


# --- as another user --------------------------------------------------------------------------------
#
# Permissions do not apply to root, and CI containers run the tests as root: there, the checks that
# need them run in a child process as the user `nobody`, through subprocess's user=, group= and
# extra_groups=[] (the setresgid, setgroups and setresuid of `setpriv --reuid --regid
# --clear-groups`, without needing util-linux). The child runs real project code (retriever.files,
# which needs only the standard library) with `python -S`: the first interpreter that `nobody` may
# execute, this one or the system's /usr/bin/python3 (a virtual environment under a private home
# folder, /root/.pyenv here, is out of its reach). Where none can, the test is skipped saying why.
# tests/test_privacy.py uses these too.

NOBODY_READY = "running as another user, with the project importable"


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@contextmanager
def checked_folder(tmp_path: Path) -> Iterator[Path]:
    """The folder for a permission check's files: tmp_path, or as root a new folder that other
    users may enter (pytest's tmp_path is private), for the child run as nobody; removed after."""
    if not is_root():
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="retriever-perm-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def checked_tmp(tmp_path):
    with checked_folder(tmp_path) as folder:
        yield folder


def run_as_nobody(code: str, *args: str) -> str:
    """Runs `code` (Python; os, sys and the repository importable; args in sys.argv[1:]) as the
    user nobody; its asserts are the test's. -> the child's output. Only for root."""
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("permissions do not apply to root, and there is no user nobody to run the check as")
    prelude = (f"import os, sys\nsys.path.insert(0, {str(REPO)!r})\nimport retriever.files\n"
               f"assert os.geteuid() != 0 and os.getgroups() in ([], [os.getegid()])\n"
               f"print({NOBODY_READY!r}, flush=True)\n")
    why = []
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        try:
            done = subprocess.run([python, "-S", "-B", "-c", prelude + textwrap.dedent(code), *args],
                                  check=False, user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], cwd="/",
                                  env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
                                  capture_output=True, text=True, timeout=60)
        except OSError as exc:  # cannot even be executed by nobody
            why.append(f"{python}: {exc.strerror}")
            continue
        if NOBODY_READY not in done.stdout:
            why.append(f"{python}: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
            continue
        assert done.returncode == 0, f"as nobody ({python}):\n{done.stdout}{done.stderr}"
        return done.stdout
    pytest.skip("permissions do not apply to root, and nobody cannot run the project's code here: " + "; ".join(why))
