"""Filling an on-disk IVF build (retriever.ondisk.build_ondisk runs both steps): shards filled in
parallel from the vectors (threads, each a `faiss.clone_index` of the trained empty index,
written to a shard file whenever it holds `shard_size` vectors, so memory holds a few shards'
codes, never the collection), then merged into one file of inverted lists
(`faiss.contrib.ondisk.merge_ondisk`) in a short-lived child process: the merge leaks the
shards' lists, and the child's exit gives their memory back."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from retriever.ondisk_files import OnDiskIndexError, _Files, _fsync, vector_hashes
from retriever.tuning import _ExactTopK

# Vectors a shard holds before it is written out: its codes stay in memory until then, one shard
# per worker, up to twice their size as FAISS's lists grow (~(dim + 8) B a vector for SQ8: 130 MB
# at dim 512). Shards of 1M took the 5M build to 2.5 GB RSS (benchmarks/ondisk.py).
DEFAULT_SHARD_SIZE = 250_000
# What the merging child runs: merge_main on its one argument, the JSON of its paths.
MERGE_CHILD = "import json, sys; from retriever.ondisk_shards import merge_main; merge_main(json.loads(sys.argv[1]))"


def _fill_shards(trained, chunks, build_dir: Path, files: _Files, workers: int, shard_size: int,
                 truth: _ExactTopK, on_progress: Callable[[int], None]) -> tuple[list[Path], int]:
    """Reads the chunks in this thread (ids and hashes to their files, the tuning queries' exact
    top 10) and hands them to `workers` threads, each filling a clone of the trained index and
    writing it to a shard file whenever it holds shard_size vectors. FAISS releases the GIL."""
    import faiss

    work: queue.Queue = queue.Queue(maxsize=2 * workers)
    shards: list[Path] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def write_shard(shard) -> None:
        with lock:
            path = build_dir / f"shard-{len(shards):05d}.faiss"
            shards.append(path)
        faiss.write_index(shard, str(path))

    def worker() -> None:
        if workers > 1:
            faiss.omp_set_num_threads(1)  # this thread's OpenMP teams: the workers are the parallelism
        shard = None
        try:
            while (item := work.get()) is not None:
                if errors:
                    continue  # drain: the reader must never block on a full queue
                ids, vecs = item
                if shard is None:
                    shard = faiss.clone_index(trained)
                shard.add_with_ids(vecs, ids)
                if shard.ntotal >= shard_size:
                    write_shard(shard)
                    shard = None
            if shard is not None and shard.ntotal and not errors:
                write_shard(shard)
        except BaseException as exc:  # noqa: BLE001  (re-raised by the reader)
            errors.append(exc)
            while work.get() is not None:
                pass

    threads = [threading.Thread(target=worker, name=f"ondisk-shard-{i}", daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    total, last_id = 0, -1
    sorted_ids = True
    try:
        with open(files.ids, "wb") as ids_out, open(files.hashes, "wb") as hashes_out:
            for ids, vecs in chunks():
                if errors:
                    break
                ids = np.ascontiguousarray(ids, dtype=np.int64)
                vecs = np.ascontiguousarray(vecs, dtype=np.float32)
                if len(ids) == 0:
                    continue
                sorted_ids = sorted_ids and bool(ids[0] > last_id) and bool(np.all(ids[1:] > ids[:-1]))
                last_id = int(ids[-1])
                ids_out.write(ids.tobytes())
                hashes_out.write(vector_hashes(vecs).tobytes())
                # split among the workers: a catalog chunk (20,000) keeps every worker busy
                for part in np.array_split(np.arange(len(ids)), min(workers, len(ids))):
                    work.put((ids[part[0] : part[-1] + 1], vecs[part[0] : part[-1] + 1]))
                truth.update(ids, vecs)
                total += len(ids)
                on_progress(total)
            for f in (ids_out, hashes_out):
                f.flush()
                os.fsync(f.fileno())
    finally:
        for _ in threads:
            work.put(None)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    if not sorted_ids and total:
        _sort_id_files(files, total)
    return sorted(shards), total


def _sort_id_files(files: _Files, total: int) -> None:
    ids = np.fromfile(files.ids, dtype=np.int64, count=total)
    hashes = np.fromfile(files.hashes, dtype=np.uint64, count=total)
    order = np.argsort(ids, kind="stable")
    ids, hashes = ids[order], hashes[order]
    if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
        raise OnDiskIndexError("duplicate ids in the vectors to index")
    ids.tofile(files.ids)
    hashes.tofile(files.hashes)


def _merge_in_subprocess(trained: Path, shards: list[Path], ivfdata: Path, main_out: Path) -> None:
    """merge_ondisk leaves the shards' inverted lists unowned (a leak in the process that merges):
    it runs in a short-lived Python process of its own."""
    args = json.dumps({"trained": str(trained), "shards": [str(s) for s in shards],
                       "ivfdata": str(ivfdata.resolve()), "main": str(main_out)})
    proc = subprocess.run([sys.executable, "-c", MERGE_CHILD, args], capture_output=True, text=True)
    if proc.returncode != 0 or not main_out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise OnDiskIndexError(f"merging the shards failed: {tail[0]}")


def merge_main(args: dict[str, Any]) -> None:
    """The child process of `_merge_in_subprocess`: merges the shards' lists into `args["ivfdata"]`
    and writes the trained index, now holding them, to `args["main"]` (an atomic rename). An
    error ends the child with a traceback on stderr and a non-zero exit status."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    index = faiss.read_index(args["trained"])
    merge_ondisk(index, args["shards"], args["ivfdata"])
    # stored by base name: _read_main makes it absolute again, for wherever the folder is
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    lists.filename = Path(args["ivfdata"]).name
    main = Path(args["main"])
    tmp = main.with_name(main.name + ".part")
    faiss.write_index(index, str(tmp))
    _fsync(tmp)
    os.replace(tmp, main)
