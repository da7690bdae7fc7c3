import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint, load_generator, load_into,
                                 resolve_checkpoint, save_checkpoint)
from pipeline.config import from_dict
from pipeline.errors import GantryError
from pipeline.worker import build_networks


def _weights(value: float, n: int = 4):
    t = torch.full((n,), value)
    return {"G": {"w": t}, "D": {"w": t * 2}, "G_ema": {"w": t * 3}}


def test_round_trip_and_no_pickle(tmp_path):
    state = {"step": 7, "rng": torch.get_rng_state(), "nested": {"a": [1, 2.5, "x"]}}
    path = save_checkpoint(tmp_path, 7, _weights(1.5), state, {"step": 7, "config": {}})
    weights, loaded, meta = load_checkpoint(path)
    assert torch.equal(weights["G_ema"]["w"], torch.full((4,), 4.5))
    assert torch.equal(loaded["rng"], state["rng"]) and loaded["nested"] == state["nested"]
    assert meta["step"] == 7 and json.loads((Path(path) / "meta.json").read_text())["step"] == 7


def test_keep_prunes_oldest(tmp_path):
    for step in range(5):
        save_checkpoint(tmp_path, step, _weights(step), {}, {"step": step}, keep=2)
    assert [Path(p).name for p in list_checkpoints(tmp_path)] == ["ckpt-000000003", "ckpt-000000004"]
    assert Path(resolve_checkpoint("latest", tmp_path)).name == "ckpt-000000004"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000003", "ckpt-000000004"]


def test_missing_and_corrupt_are_one_line_errors(tmp_path):
    with pytest.raises(GantryError, match="no checkpoint"):
        resolve_checkpoint("latest", tmp_path)
    with pytest.raises(GantryError, match="not found"):
        resolve_checkpoint(str(tmp_path / "nope"), tmp_path)
    path = save_checkpoint(tmp_path, 1, _weights(1.0), {}, {"step": 1})
    (Path(path) / "G.safetensors").write_bytes(b"garbage")
    with pytest.raises(GantryError, match="cannot read checkpoint"):
        load_checkpoint(path)


WRITER = """
import sys, torch
from pipeline.checkpoint import save_checkpoint
root = sys.argv[1]
big = {"w": torch.randn(64 * 1024 * 1024 // 4)}   # 64 MB per network: a save takes a while
for step in range(1, 100):
    save_checkpoint(root, step, {"G": big, "D": big, "G_ema": big}, {"step": step}, {"step": step}, keep=2)
"""


def test_weights_another_architecture_wrote_are_one_line_errors(tmp_path):
    """A checkpoint is read by the models of the code that reads it: weights they no longer fit
    (a model changed between versions) say what does not fit instead of a state-dict dump."""
    def resnet(width):
        cfg = from_dict({"model": {"arch": "resnet", "resolution": 32, "z_dim": 8, "g_width": width, "d_width": 8},
                         "data": {"source": "shards", "path": "shards/"}})
        return cfg, build_networks(cfg, channels=1)
    cfg, (G, D) = resnet(8)
    _, (wider, _) = resnet(16)
    weights = {"G": G.state_dict(), "D": D.state_dict(), "G_ema": wider.state_dict()}
    path = save_checkpoint(tmp_path, 1, weights, {}, {"step": 1, "channels": 1, "config": cfg.model_dump(mode="json")})
    with pytest.raises(GantryError, match=r"ckpt-000000001: its G_ema weights do not fit the network its config "
                                          r"builds: \d+ of another shape \(first blocks\.0\.bn1\.bias\)") as e:
        load_generator(path)
    assert "\n" not in str(e.value)
    with pytest.raises(GantryError, match=r"1 missing \(first fc.bias\), 1 unexpected \(first fc.b\)"):
        load_into(G, {("fc.b" if k == "fc.bias" else k): v for k, v in G.state_dict().items()}, "here", "G")
    _, (other, _) = resnet(8)
    load_into(other, weights["G"], path, "G")  # weights that fit load as before
    assert torch.equal(other.fc.weight, G.fc.weight)


def test_kill_mid_write_leaves_previous_checkpoint_loadable(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=os.getcwd())
    second = tmp_path / "ckpt-000000002"
    try:
        deadline = time.time() + 120
        # wait until step 1 is committed and step 2's weights are being written, then kill hard
        while time.time() < deadline:
            if latest_checkpoint(tmp_path) and second.is_dir() and any(second.iterdir()):
                break
            time.sleep(0.01)
        else:
            pytest.fail("writer never got to its second checkpoint")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert not (second / "meta.json").exists()  # it really died mid-write: step 2 never committed
    newest = latest_checkpoint(tmp_path)
    assert Path(newest).name == "ckpt-000000001"
    weights, state, meta = load_checkpoint(newest)
    assert weights["G"]["w"].numel() == 64 * 1024 * 1024 // 4 and state["step"] == meta["step"]


def test_a_failed_upload_never_replaces_the_previous_checkpoint(s3, monkeypatch):
    """An object store has no rename: a save that fails half-way (here, the server refusing
    state.pt after the weights went up) leaves an uncommitted folder that nothing loads, and the
    previous checkpoint stays the newest."""
    from pipeline import storage

    root = f"{s3.bucket('failed-upload')}/run/checkpoints"
    save_checkpoint(root, 1, _weights(1.0), {"step": 1}, {"step": 1}, keep=2)
    real_write = storage.write_bytes

    def failing(url, data):
        if url.endswith("state.pt"):
            raise storage.StorageError(url, "cannot write", "ConnectionError: connection reset")
        real_write(url, data)

    monkeypatch.setattr(storage, "write_bytes", failing)
    with pytest.raises(GantryError, match="ckpt-000000002/state.pt: cannot write"):
        save_checkpoint(root, 2, _weights(2.0), {"step": 2}, {"step": 2}, keep=2)
    monkeypatch.setattr(storage, "write_bytes", real_write)
    assert "G.safetensors" in storage.list_names(f"{root}/ckpt-000000002")  # it did fail half-way
    assert [storage.basename(p) for p in list_checkpoints(root)] == ["ckpt-000000001"]
    weights, state, meta = load_checkpoint(resolve_checkpoint("latest", root))
    assert state["step"] == meta["step"] == 1 and torch.equal(weights["G"]["w"], torch.full((4,), 1.0))
    # the next successful save clears the dead one away
    save_checkpoint(root, 3, _weights(3.0), {"step": 3}, {"step": 3}, keep=2)
    assert storage.list_names(root) == ["ckpt-000000001", "ckpt-000000003"]
