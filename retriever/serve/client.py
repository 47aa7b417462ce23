"""Find a running `retriever serve` for an index and query it. The standard library only (urllib,
json), so the CLI can use it without importing anything heavy.

While a server runs it keeps `serve.json` (0600) in its index folder: pid, host, port, whether a
token is required, version, start time. A file whose process is gone, or whose port does not
answer, is stale: `find_server` ignores it and removes it."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from retriever.durable import pid_alive
from retriever.errors import RetrieverError
from retriever.locations import index_folder as _index_folder

DISCOVERY_FILE = "serve.json"
TOKEN_ENV = "RETRIEVER_TOKEN"
TOKEN_HEADER = "X-Retriever-Token"
PROBE_TIMEOUT_S = 0.5
# The filter names of retriever.filters.build -> the API's query parameters.
FILTER_PARAMS = {"after": "after", "before": "before", "folders": "in", "cameras": "camera", "near": "near",
                 "within_km": "within", "formats": "format", "min_size": "min_size", "tags": "tag",
                 "tags_any": "tag_any", "no_tags": "no_tag", "texts": "text", "concepts": "concept",
                 "min_score": "min_score"}


class ServerError(RetrieverError):
    """The server answered with an error (its message), or did not answer."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ServerUnsupported(RetrieverError):
    """A query the server cannot answer the way the CLI would (e.g. image terms in search): run it locally."""


@dataclass
class ServerHit:
    """A hit that came back from a server, with what the CLI's printers read of a search Hit
    (rank, score, id, path, meta, label, as_dict), so it prints exactly as a local one."""

    rank: int
    score: float
    id: int
    path: str
    meta: dict[str, Any]

    @property
    def label(self) -> str:
        timestamp = self.meta.get("timestamp")
        return self.path if self.meta.get("frame_ms") is None or not timestamp else f"{self.path}@{timestamp}"

    def as_dict(self) -> dict[str, Any]:
        meta = {k: v for k, v in self.meta.items() if k != "timestamp"}
        out = {"rank": self.rank, "score": self.score, "id": self.id, "path": self.path, **meta}
        if "timestamp" in self.meta:
            out["timestamp"] = self.meta["timestamp"]
        return out


def hits_from_dicts(dicts: Sequence[dict[str, Any]]) -> list[ServerHit]:
    """server_query's dicts -> objects the CLI prints like local hits (_print_hits, preview, --html)."""
    out = []
    for d in dicts:
        meta = {k: v for k, v in d.items() if k not in ("rank", "score", "id", "path")}
        out.append(ServerHit(int(d["rank"]), float(d["score"]), int(d["id"]), d["path"], meta))
    return out


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    host: str
    port: int
    token_required: bool
    version: str
    started_at: str
    index_folder: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"


def index_folder(home: str | os.PathLike | None, index_name: str) -> Path:
    """Where an index lives (retriever.locations: --home, else $RETRIEVER_HOME, else ./indexes),
    without importing the catalog (SQLAlchemy, numpy)."""
    return _index_folder(home, index_name)


def write_discovery(index_folder: str | os.PathLike, info: ServerInfo) -> Path:
    """serve.json, 0600, written whole (a temporary file renamed)."""
    folder = Path(index_folder)
    final = folder / DISCOVERY_FILE
    tmp = folder / f".{DISCOVERY_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(info), f)
    os.replace(tmp, final)
    return final


def remove_discovery(index_folder: str | os.PathLike, pid: int | None = None) -> None:
    """Remove serve.json if it is this process's (pid), or whoever's when pid is None."""
    path = Path(index_folder) / DISCOVERY_FILE
    try:
        if pid is not None and json.loads(path.read_text()).get("pid") != pid:
            return
        path.unlink()
    except (OSError, ValueError):
        pass


def find_server(index_folder: str | os.PathLike, timeout: float = PROBE_TIMEOUT_S) -> ServerInfo | None:
    """The server running for the index in `index_folder`, if one answers; a stale discovery file
    (dead pid, or no answer on its port) is removed and None returned."""
    path = Path(index_folder) / DISCOVERY_FILE
    try:
        raw = json.loads(path.read_text())
        info = ServerInfo(**{k: raw[k] for k in ServerInfo.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        _remove_if_same(path, None)
        return None
    if not pid_alive(info.pid):
        _remove_if_same(path, info.pid)
        return None
    try:
        status = _request(info, "/api/status", timeout=timeout)
    except ServerError as exc:
        if exc.status is None:  # no answer at all: stale (or hung); a 401 means it is there
            _remove_if_same(path, info.pid)
            return None
        if exc.status == 401:
            return info  # a token is needed: server_query reports it
        return None
    if os.path.realpath(status.get("folder", "")) != os.path.realpath(str(index_folder)):
        return None  # the port now belongs to another server
    return info


def server_query(
    info: ServerInfo,
    words: Sequence[str],
    k: int,
    filters: dict[str, Any] | None = None,
    kind: str = "search",
    timeout: float = 30.0,
    keywords: bool = True,
) -> list[dict[str, Any]]:
    """Hit dicts (as `Hit.as_dict()` gives them) for a `retriever search` (kind="search", the
    command-line words) or `retriever similar` (kind="similar", one image path) through the server.
    filters: retriever.filters.build's keyword arguments as the CLI has them (None/empty = unset).

    Raises ServerUnsupported for what only a local run does the CLI's way: image terms in a search,
    several images or operators in similar. Raises ServerError when the server refuses or does not
    answer."""
    params = _filter_params(filters or {})
    params.append(("k", str(int(k))))
    if kind == "search":
        if any(_names_image_file(w) or w.lower().startswith(("image:", "img:")) for w in words):
            raise ServerUnsupported("image terms are read locally")
        params += [("w", w) for w in words] + [("keywords", "true" if keywords else "false")]
        return _request(info, "/api/search?" + urllib.parse.urlencode(params), timeout=timeout)["results"]
    if kind != "similar":
        raise ValueError(f"kind must be 'search' or 'similar', not {kind!r}")
    if len(words) != 1 or words[0] in ("+", "-") or ":" in words[0].split("/")[0] or "*" in words[0]:
        raise ServerUnsupported("several images or operators are read locally")
    path = os.path.normpath(os.path.abspath(os.path.expanduser(words[0])))
    try:
        st = os.stat(path)
    except OSError:
        raise ServerUnsupported(f"cannot read {words[0]} here") from None
    lookup = params + [("path", path), ("size", str(st.st_size)), ("mtime_ns", str(st.st_mtime_ns))]
    try:
        return _request(info, "/api/similar?" + urllib.parse.urlencode(lookup), timeout=timeout)["results"]
    except ServerError as exc:
        if exc.status not in (404, 409):
            raise
    with open(path, "rb") as f:  # outside the collection, or changed: the server decodes the bytes
        data = f.read()
    body, content_type = _multipart("file", os.path.basename(path), data)
    return _request(info, "/api/similar?" + urllib.parse.urlencode(params), timeout=timeout,
                    data=body, content_type=content_type)["results"]


# -- helpers ----------------------------------------------------------------------------------------


def _filter_params(filters: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in filters.items():
        if value is None or value == () or value == []:
            continue
        param = FILTER_PARAMS.get(name)
        if param is None:
            raise ValueError(f"unknown filter {name!r}")
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if name == "folders":  # relative to the client's working directory, not the server's
                v = os.path.normpath(os.path.abspath(os.path.expanduser(str(v))))
            out.append((param, str(v)))
    return out


def _request(info: ServerInfo, path: str, *, timeout: float, data: bytes | None = None,
             content_type: str | None = None) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    token = os.environ.get(TOKEN_ENV)
    if token:
        headers[TOKEN_HEADER] = token
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(info.url + path, data=data, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error") or exc.reason
        except (ValueError, OSError, AttributeError):
            message = exc.reason
        if exc.code == 401:
            message = f"the server at {info.url} needs a token: set {TOKEN_ENV}"
        raise ServerError(str(message), exc.code) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServerError(f"the server at {info.url} did not answer: {getattr(exc, 'reason', exc)}") from None


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{safe_name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode("utf-8", "surrogateescape")
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _names_image_file(word: str) -> bool:
    return os.path.isfile(os.path.expanduser(word))


def _remove_if_same(path: Path, pid: int | None) -> None:
    remove_discovery(path.parent, pid)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
