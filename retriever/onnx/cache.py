"""One ONNX export per machine and model: a content-addressed cache that every index of the model
refers to, instead of an export (580 MB for ViT-B-32) and a measurement in each index folder.

    CACHE/onnx/<model>-<key>/             one entry: key = hash of (FORMAT, OPSET, the graph's
                                          form GRAPH, model id, the agreement tolerance); the
                                          model id names the weights (a file's content hash, a
                                          pretrained tag, the offline encoder's version)
        manifest.json                     the export's record (the catalog setting "onnx" of every
                                          index using it: towers, tokenizer, agreement with
                                          PyTorch, the indexing measurement) and each file's size
                                          and BLAKE2b hash; written last
        text.onnx, text.<id>.data, ...    the graphs, their weights, the tokenizer
        verified.json                     (size, mtime, inode) of each file when it was last
                                          hashed: unchanged files are not hashed again
        users/<hash>                      the index folders that use the entry (for `cache list`
                                          and `cache prune`)
    CACHE/onnx/<entry>.lock               held while the entry is looked at or built

CACHE is $RETRIEVER_CACHE_DIR, else the user's cache folder (platformdirs: ~/.cache/retriever).
An entry is built in a temporary folder and renamed into place once its manifest is written, under
the lock: two creators of the same model build it once, a kill leaves only a temporary folder that
is never used (and is removed by the next build), and an entry whose files do not match their
recorded size or hash is never used: it is built again. A refused export is cached too (the
model cannot be exported here; the reason is kept)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from retriever.durable import atomic_write, fsync_folder, pid_alive
from retriever.errors import RetrieverError
from retriever.locations import CACHE_ENV, cache_root  # noqa: F401  (re-exported)
from retriever.onnx.record import GRAPH, OPSET, TOLERANCE

FORMAT = 1  # what an entry holds; a new format builds new entries
MANIFEST = "manifest.json"
VERIFIED = "verified.json"
USERS = "users"
POINTER = "onnx.json"  # in an index folder: which entry the index uses (the daemon watches it)
HASH_CHUNK = 4 << 20


class CacheError(RetrieverError):
    """The model cache cannot be written (a read-only folder, a full disk)."""


def entry_name(model_id: str, tolerance: float) -> str:
    """The entry of a model's export checked to `tolerance` (the default one, but for tests)."""
    graph = f"|graph{GRAPH}" if GRAPH > 1 else ""  # entries of the first form keep their names
    key = hashlib.sha256(f"{FORMAT}|{OPSET}{graph}|{model_id}|{tolerance!r}".encode()).hexdigest()[:20]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", model_id.split("/")[1] if "/" in model_id else model_id).strip("-")
    return f"{slug[:40] or 'model'}-{key}"


@dataclass(frozen=True)
class Entry:
    folder: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def record(self) -> dict[str, Any]:
        """The export's record, as the indexes store it (setting "onnx"), with where it lives."""
        return {**self.manifest["record"], "cache": self.name, "cache_folder": str(self.folder)}

    @property
    def bytes(self) -> int:
        return sum(f["size"] for f in self.manifest["files"].values())

    def add_user(self, index_folder: str | os.PathLike) -> None:
        """Remember that the index in `index_folder` uses this entry (best effort)."""
        path = str(Path(index_folder).absolute())
        users = self.folder / USERS
        try:
            users.mkdir(exist_ok=True)
            (users / hashlib.sha256(path.encode()).hexdigest()[:16]).write_text(path)
        except OSError:
            pass

    def users(self) -> list[str]:
        """Index folders that use the entry now (their pointer names it)."""
        out = []
        for f in sorted((self.folder / USERS).glob("*")):
            try:
                folder = f.read_text()
                pointer = json.loads((Path(folder) / POINTER).read_text())
            except (OSError, ValueError):
                continue
            if pointer.get("cache") == self.name:
                out.append(folder)
        return out


class ModelCache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = cache_root(root)
        self.folder = self.root / "onnx"

    def lookup(self, model_id: str, tolerance: float = TOLERANCE) -> Entry | None:
        """The model's entry when it is complete and its files are intact; else None."""
        return self.open_entry(self.folder / entry_name(model_id, tolerance), model_id)

    def open_entry(self, folder: Path, model_id: str | None = None) -> Entry | None:
        return open_entry(folder, model_id)

    def get_or_create(self, model_id: str, build: Callable[[Path], dict[str, Any]],
                      tolerance: float = TOLERANCE) -> tuple[Entry, bool]:
        """(the model's entry, whether this call built it). `build(folder)` writes the export into
        an empty folder and returns its record. Raises CacheError when the cache cannot be
        written; what `build` raises goes through, leaving nothing behind."""
        import fcntl

        name = entry_name(model_id, tolerance)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = os.open(self.folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise _cache_error(self.root, exc) from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another creator of the model: wait, then use its entry
            entry = self.lookup(model_id, tolerance)
            if entry is not None:
                return entry, False
            self._remove_partial(name)
            tmp = self.folder / f".{name}.{os.getpid()}.{secrets.token_hex(3)}.tmp"
            try:
                tmp.mkdir()
                record = build(tmp)
                files = {p.name: {"size": p.stat().st_size, "blake2b": _hash(p)}
                         for p in sorted(tmp.iterdir()) if p.is_file()}
                manifest = {"format": FORMAT, "model_id": model_id, "created_at": _now(), "record": record,
                            "files": files}
                _write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))
                final = self.folder / name
                if final.exists():  # an entry found damaged: out of the way first
                    trash = self.folder / f".{name}.{os.getpid()}.{secrets.token_hex(3)}.old.tmp"
                    os.rename(final, trash)
                    shutil.rmtree(trash, ignore_errors=True)
                os.rename(tmp, final)
                fsync_folder(self.folder)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise _cache_error(self.root, exc) from None
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            entry = Entry(final, manifest)
            _record_verified(final, files)
            return entry, True
        finally:
            os.close(lock)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry: name, model id, bytes, whether intact, the indexes that use it."""
        out = []
        for folder in sorted(p for p in self.folder.glob("*") if p.is_dir() and not p.name.startswith(".")):
            entry = self.open_entry(folder)
            try:
                manifest = entry.manifest if entry else json.loads((folder / MANIFEST).read_text())
            except (OSError, ValueError):
                manifest = {}
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            users = Entry(folder, manifest).users() if manifest else []
            out.append({"name": folder.name, "model_id": manifest.get("model_id"), "bytes": size,
                        "intact": entry is not None, "ok": (manifest.get("record") or {}).get("ok"),
                        "created_at": manifest.get("created_at"), "folder": str(folder), "users": users})
        return out

    def prune(self, dry_run: bool = False) -> list[dict[str, Any]]:
        """Remove the entries no index uses (and damaged ones, and temporary folders of builds
        that died); the entries removed."""
        import fcntl

        removed = []
        for info in self.entries():
            if info["users"] and info["intact"]:
                continue
            lock_path = self.folder / f"{info['name']}.lock"
            if not dry_run:
                lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # being built or rebuilt right now
                    os.close(lock)
                    continue
                try:
                    shutil.rmtree(info["folder"], ignore_errors=True)
                finally:
                    os.close(lock)
            removed.append(info)
        if not dry_run:
            for name in {p.name.split(".")[1] for p in self.folder.glob(".*.tmp")}:
                self._remove_partial(name)
        return removed

    def _remove_partial(self, name: str) -> None:
        """Temporary folders of builds of `name` whose process is gone (killed mid-export)."""
        for tmp in self.folder.glob(f".{name}.*.tmp"):
            parts = tmp.name.split(".")
            pid = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
            if pid is None or pid == os.getpid() or not pid_alive(pid):
                shutil.rmtree(tmp, ignore_errors=True)


def open_entry(folder: str | os.PathLike, model_id: str | None = None) -> Entry | None:
    """The entry in `folder` when it is complete, of `model_id` (None: any) and intact; else None."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    if model_id is not None and manifest.get("model_id") != model_id:
        return None
    return Entry(folder, manifest) if _intact(folder, manifest.get("files") or {}) else None


def _intact(folder: Path, files: dict[str, dict[str, Any]]) -> bool:
    """Every file present with its recorded size; hashed again (and compared) unless it is the
    very file that was last hashed (same size, mtime and inode)."""
    try:
        verified = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        verified = {}
    rehashed = {}
    for name, expected in files.items():
        try:
            st = (folder / name).stat()
        except OSError:
            return False
        if st.st_size != expected.get("size"):
            return False
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        if verified.get(name) != stamp:
            if _hash(folder / name) != expected.get("blake2b"):
                return False
            rehashed[name] = stamp
    if rehashed:
        try:
            _write_text(folder / VERIFIED, json.dumps({**verified, **rehashed}))
        except OSError:  # a read-only cache: hashed again next time
            pass
    return True


def _record_verified(folder: Path, files: dict[str, Any]) -> None:
    stamps = {}
    for name in files:
        st = (folder / name).stat()
        stamps[name] = [st.st_size, st.st_mtime_ns, st.st_ino]
    try:
        _write_text(folder / VERIFIED, json.dumps(stamps))
    except OSError:
        pass


def _hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _cache_error(root: Path, exc: OSError) -> CacheError:
    return CacheError(f"cannot write the model cache {root}: {exc.strerror or exc}; set {CACHE_ENV} "
                      "to a writable folder (or --cache-dir)")
