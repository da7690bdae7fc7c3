"""`gantry shards build|add|verify` as a user types them."""
from __future__ import annotations

import json
import subprocess
import sys

from launch.cli import main


def test_build_add_verify_and_a_flipped_byte(tmp_path, capsys):
    out = tmp_path / "ring"
    assert main(["shards", "build", "toy-ring", str(out), "--resolution", "16", "--limit", "120",
                 "--shard-size", "50", "--workers", "1"]) == 0
    assert "3 shards, 120 samples" in capsys.readouterr().out
    assert main(["shards", "add", str(out), "toy-grid", "--limit", "30", "--workers", "1"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["version"] == 2 and [s["url"] for s in m["shards"]][-1] == "toy-ring-000003.tar"

    assert main(["shards", "verify", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")

    shard = out / "toy-ring-000002.tar"
    data = bytearray(shard.read_bytes())
    data[1700] ^= 0x01
    shard.write_bytes(bytes(data))
    assert main(["shards", "verify", str(out)]) == 1
    report = capsys.readouterr().out
    assert "PROBLEM toy-ring-000002.tar: sha256 does not match" in report and "FAILED: 1 problem" in report


def test_errors_are_one_line_and_exit_1(tmp_path):
    r = subprocess.run([sys.executable, "-m", "launch.cli", "shards", "verify", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == f"gantry: {tmp_path}/manifest.json: no shard manifest (build one with `gantry shards build`)"
