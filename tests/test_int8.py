"""--precision int8: the image tower quantized by ONNX Runtime, derived from the fp32 export in
the model cache, recorded in the index, used for indexing and image queries, refused where it
cannot run."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from retriever.cli import main
from tests.conftest import PHOTOS

pytest.importorskip("onnxruntime.quantization")


def _vectors(home):
    from retriever.index import Index

    with Index.open(home, "default") as idx:
        vectors = idx.vector_index()
        ids = sorted(idx.catalog.known_files().values(), key=lambda f: f.path)
        return {f.path: vectors.reconstruct(f.ids[0]) for f in ids if f.ids}


def test_an_int8_index_agrees_with_fp32_and_keeps_its_precision(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVER_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    for precision in ("fp32", "int8"):
        result = runner.invoke(main, ["index", str(PHOTOS), "--home", str(tmp_path / precision), "--model", "offline",
                                      "--precision", precision, "--json", "-q"])
        assert result.exit_code == 0, result.output
    status = runner.invoke(main, ["status", "--home", str(tmp_path / "int8")])
    assert "precision  int8 image tower" in status.output, status.output
    fp32, int8 = _vectors(tmp_path / "fp32"), _vectors(tmp_path / "int8")
    assert fp32.keys() == int8.keys() and len(fp32) >= 14
    cosines = [float(np.dot(fp32[p], int8[p])) for p in fp32]
    assert min(cosines) > 0.97 and np.mean(cosines) > 0.99, cosines
    assert not all(np.allclose(fp32[p], int8[p], atol=1e-6) for p in fp32), "the int8 tower really ran"
    # the same ranking for an image query on either index
    rank = {}
    for precision in ("fp32", "int8"):
        out = runner.invoke(main, ["similar", str(PHOTOS / "chelsea.png"), "--home", str(tmp_path / precision),
                                   "-k", "3", "--paths", "--no-daemon"])
        assert out.exit_code == 0, out.output
        rank[precision] = out.output.split()
    assert rank["fp32"][:1] == rank["int8"][:1]
    # the precision is the index's for good; int8 only where ONNX Runtime runs it
    again = runner.invoke(main, ["index", str(PHOTOS), "--home", str(tmp_path / "int8"), "--precision", "fp32"])
    assert again.exit_code != 0 and "--precision int8, not fp32" in again.output
    torch_only = runner.invoke(main, ["index", str(PHOTOS), "--home", str(tmp_path / "int8"), "--backend", "pytorch"])
    assert torch_only.exit_code != 0 and "not --backend pytorch" in torch_only.output
    no_onnx = runner.invoke(main, ["index", str(PHOTOS), "--home", str(tmp_path / "x"), "--model", "offline",
                                   "--precision", "int8", "--no-onnx"])
    assert no_onnx.exit_code != 0 and "Traceback" not in no_onnx.output and "not --no-onnx" in no_onnx.output
    # a damaged int8 tower: a clear error until `retriever optimize --onnx` makes it again
    tower = next((tmp_path / "cache" / "onnx").glob("*/image.int8.onnx"))
    tower.write_bytes(tower.read_bytes()[:1000])
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "again.png").write_bytes((PHOTOS / "chelsea.png").read_bytes())
    home = str(tmp_path / "int8")
    more = runner.invoke(main, ["index", str(tmp_path / "more"), "--home", home, "-q"])
    assert more.exit_code != 0 and "retriever optimize --onnx" in more.output, more.output
    fixed = runner.invoke(main, ["optimize", "--onnx", "--home", home])
    assert fixed.exit_code == 0, fixed.output
    more = runner.invoke(main, ["index", str(tmp_path / "more"), "--home", home, "-q", "--json"])
    assert more.exit_code == 0 and '"backend": "onnxruntime"' in more.output, more.output
