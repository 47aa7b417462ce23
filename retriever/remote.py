"""Collections on remote or shared storage, through fsspec: s3://, gs://, file://, memory://, ...

A root given as a URL is listed and read here; a plain path never comes here (files.walk and
images.read_file keep the fast local code). The catalog stores each file's URL as its path, in
the canonical spelling fsspec gives it (`s3://bucket/key`, `file:///abs/path`), so that the same
root given twice, with or without a trailing slash, finds the same rows.

Change detection works as for local files, on (size, modification time): object stores give a
LastModified time that changes on every overwrite. fsspec and the protocol packages (s3fs,
gcsfs) are optional: `pip install 'retriever[distributed]'` plus `s3fs` or `gcsfs`.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import os
import posixpath
import re
from typing import Any, Callable, Iterable, Iterator

from retriever.errors import ImageDecodeError, MissingDependencyError, RetrieverError

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")
# The package that brings each common protocol, for the error when it is missing.
_PROTOCOL_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                      "hf": "huggingface_hub", "sftp": "paramiko", "http": "aiohttp", "https": "aiohttp"}


class RemoteStorageError(RetrieverError):
    """A URL could not be listed or opened (unknown protocol, missing credentials, ...)."""


def is_url(path: str) -> bool:
    """True for `scheme://...` (two letters at least, so a Windows drive `C:/` is a path)."""
    return bool(_URL_RE.match(path))


def filesystem(url: str) -> tuple[Any, str]:
    """-> (fsspec filesystem, the path inside it). Raises MissingDependencyError when fsspec or the
    protocol's package is not installed."""
    try:
        import fsspec
    except ImportError:
        raise MissingDependencyError(
            f"reading {url.split('://')[0]}:// paths needs fsspec: pip install 'retriever[distributed]'"
        ) from None
    protocol = url.split("://", 1)[0].lower()
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError:
        package = _PROTOCOL_PACKAGES.get(protocol, f"the fsspec package for {protocol}://")
        raise MissingDependencyError(f"reading {protocol}:// paths needs {package}: pip install {package}") from None
    except ValueError as exc:  # fsspec: "Protocol not known: ..."
        raise RemoteStorageError(f"cannot open {url}: {exc}") from None


def normalize_url(url: str) -> str:
    """The canonical spelling of a URL (what the catalog stores): no trailing slash, `//` folded."""
    fs, path = filesystem(url)
    return _url_of(fs, path.rstrip("/") or "/")


def _url_of(fs: Any, path: str) -> str:
    return fs.unstrip_protocol(path)


def walk_url(
    root: str,
    *,
    include_hidden: bool = False,
    exclude: Iterable[str] = (),
    on_error: Callable[[str, OSError], None] | None = None,
    wanted: Callable[[str], bool],
    hidden: Callable[[str], bool],
) -> Iterator[tuple[str, int, int]]:
    """(url, size, mtime_ns) of every file under the URL `root` (a folder prefix, listed
    recursively, or one object) whose name `wanted` accepts, sorted by URL. Names `hidden`
    accepts, and everything under such folders, are skipped unless include_hidden; `exclude`
    globs match the full URL or the base name. Raises RetrieverError for a root that does not
    exist; a root that cannot be listed goes to on_error."""
    patterns = list(exclude)
    fs, top = filesystem(root)
    top = top.rstrip("/") or "/"
    try:
        info = fs.info(top)
    except FileNotFoundError:
        raise RetrieverError(f"no such file or folder: {root}") from None
    except OSError as exc:
        _report(on_error, root, exc)
        return
    except Exception as exc:  # noqa: BLE001 - protocol packages raise their own types (credentials, network)
        raise RemoteStorageError(f"cannot list {root}: {type(exc).__name__}: {exc}"[:300]) from None
    if info.get("type") == "file":
        listing = {top: info}
    else:
        try:
            listing = fs.find(top, detail=True)
        except OSError as exc:
            _report(on_error, root, exc)
            return
        except Exception as exc:  # noqa: BLE001 - see above
            raise RemoteStorageError(f"cannot list {root}: {type(exc).__name__}: {exc}"[:300]) from None
    local = "file" in _protocols(fs)
    for path in sorted(listing):
        detail = listing[path]
        if detail.get("type", "file") != "file":
            continue
        relative = posixpath.relpath(path, top) if path != top else posixpath.basename(path)
        name = posixpath.basename(path)
        if not include_hidden and any(hidden(part) for part in relative.split("/")):
            continue
        url = _url_of(fs, path)
        if any(fnmatch.fnmatch(url, p) or fnmatch.fnmatch(name, p) for p in patterns):
            continue
        if not wanted(name):
            continue
        yield url, int(detail.get("size") or 0), modified_ns(detail, path if local else None)


def _report(on_error, path: str, exc: OSError) -> None:
    if on_error is not None:
        on_error(path, exc)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def modified_ns(detail: dict[str, Any], local_path: str | None = None) -> int:
    """The modification time an fsspec listing gives, in ns since the epoch (0 when it gives none):
    `mtime` (local), `LastModified` (S3), `updated` (GCS), `last_modified` (Azure), `created` (memory).
    A local file's (file://) comes from os.stat, exact to the ns as for a plain path: fsspec
    gives it as float seconds."""
    if local_path is not None:
        try:
            return os.stat(local_path).st_mtime_ns
        except OSError:
            pass
    for key in ("mtime", "LastModified", "updated", "last_modified", "modified", "created"):
        value = detail.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return int(round(float(value) * 1e9))
        if isinstance(value, str):
            try:
                value = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(value, _dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=_dt.timezone.utc)
            return int(round(value.timestamp() * 1e9))
    return 0


def read_url(url: str, *, max_bytes: int) -> bytes:
    """A whole object's bytes. Raises ImageDecodeError with a one-line reason, like images.read_file."""
    try:
        fs, path = filesystem(url)
        with fs.open(path, "rb") as f:
            size = getattr(f, "size", None)
            if size is not None and size > max_bytes:
                raise ImageDecodeError(f"too large to read: {size / 1e6:.0f} MB (limit {max_bytes / 1e6:.0f} MB)")
            data = f.read(max_bytes + 1)
    except ImageDecodeError:
        raise
    except RetrieverError as exc:
        raise ImageDecodeError(f"cannot read: {exc}") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - protocol packages raise their own types
        raise ImageDecodeError(f"cannot read: {type(exc).__name__}: {exc}"[:300]) from None
    if len(data) > max_bytes:
        raise ImageDecodeError(f"too large to read: over {max_bytes / 1e6:.0f} MB")
    return data


def vanished(url: str) -> bool:
    """Gone for certain; an object we cannot ask about now (network, credentials) is kept."""
    try:
        fs, path = filesystem(url)
        fs.info(path)  # not fs.exists: some protocols answer False when the network fails
    except FileNotFoundError:
        return True
    except Exception:  # noqa: BLE001 - unreachable is not gone
        return False
    return False
