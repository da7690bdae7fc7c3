"""pipeline/storage.py against a real S3-compatible server (moto) and a real HTTP server on
loopback, and the local file system: the same calls, one-line errors that name the URL and
never a secret."""
from __future__ import annotations

import os

import pytest

from pipeline import storage
from pipeline.errors import GantryError
from servers import HttpServer, free_port


@pytest.mark.parametrize("where", ["local", "s3"])
def test_write_read_list_remove(tmp_path, s3, where):
    root = str(tmp_path) if where == "local" else s3.bucket(f"rw-{where}") + "/runs"
    storage.ensure_dir(root)
    storage.write_bytes(storage.join(root, "a", "x.bin"), b"one")
    storage.write_bytes(storage.join(root, "a", "x.bin"), b"two")  # replaced whole
    storage.write_bytes(storage.join(root, "b.txt"), b"b")
    assert storage.read_bytes(storage.join(root, "a", "x.bin")) == b"two"
    assert storage.list_names(root) == ["a", "b.txt"]
    assert storage.exists(storage.join(root, "b.txt")) and not storage.exists(storage.join(root, "c"))
    with storage.open_read(storage.join(root, "a", "x.bin")) as f:
        assert f.read(2) == b"tw"
    storage.remove(storage.join(root, "a"))
    assert storage.list_names(root) == ["b.txt"]
    assert storage.list_names(storage.join(root, "nothing-here")) == []
    if where == "local":
        assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # atomic writes leave no temp files


def test_http_reads_and_refuses_writes(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "s.tar").write_bytes(b"shard bytes")
    server = HttpServer(tmp_path / "served", tmp_path)
    try:
        url = f"{server.url}/s.tar"
        assert storage.read_bytes(url) == b"shard bytes"
        with pytest.raises(GantryError, match="read only"):
            storage.write_bytes(url, b"x")
        with pytest.raises(GantryError, match="not found"):
            storage.read_bytes(f"{server.url}/missing.tar")
    finally:
        server.stop()


def test_bad_locations_are_one_line_errors_naming_the_url(s3, monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_S", 0.01)
    with pytest.raises(GantryError, match=r"ftp://host/x: unknown storage scheme 'ftp://'"):
        storage.read_bytes("ftp://host/x")
    with pytest.raises(GantryError, match="credentials in it"):
        storage.check("s3://key:secret@bucket/x")
    with pytest.raises(GantryError, match="s3://no-such-bucket/runs: bucket 'no-such-bucket' is not usable") as e:
        storage.ensure_dir("s3://no-such-bucket/runs")
    assert "\n" not in str(e.value) and s3.env["AWS_SECRET_ACCESS_KEY"] not in str(e.value)
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    with pytest.raises(GantryError, match=r"s3://b/k: cannot read: .*\(after \d+ tries\)") as e:
        storage.read_bytes("s3://b/k")
    assert "\n" not in str(e.value) and s3.env["AWS_SECRET_ACCESS_KEY"] not in str(e.value)
