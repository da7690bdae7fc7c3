"""MLflowTracker against a real MLflow server: round trip, outages, spool + sync, resume."""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
from mlflow import MlflowClient

from launch.cli import main as gantry
from pipeline.config import TrackingConfig
from pipeline.tracking.mlflow_tracker import MLflowTracker
from pipeline.tracking.records import Record
from pipeline.tracking.sender import Sender

pytestmark = pytest.mark.slow  # a real server: ~15 s to start, ~10 s per restart on 2 cores


def make_tracker(server, tmp_path, name, **kw):
    kw.setdefault("flush_interval", 0.2)
    kw.setdefault("system_metrics", False)
    cfg = TrackingConfig(uri=server.uri, experiment="tracker-tests", backlog=kw.pop("backlog", 10000))
    return MLflowTracker(cfg, name, spool_dir=tmp_path / "spool", **kw)


def steps_of(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def wait_for_steps(client, run_id, key, n, timeout=30.0):
    deadline = time.monotonic() + timeout
    while len(steps_of(client, run_id, key)) < n:
        assert time.monotonic() < deadline, f"server never got {n} points of {key}"
        time.sleep(0.2)


def test_round_trip(mlflow_server, tmp_path):
    t = make_tracker(mlflow_server, tmp_path, "round-trip", tags={"data_version": "mnist-v3"})
    t.log_params({"model": {"arch": "dcgan", "z_dim": 64}, "seed": 7})
    losses = {s: 1.0 / (s + 1) for s in range(0, 300, 3)}
    for s, v in losses.items():
        t.log_metrics({"loss/G": v}, s)
    grid = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    t.log_image(grid, "samples", step=150)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "state.json").write_text('{"step": 300}')
    t.log_artifact(str(tmp_path / "ckpt"), "checkpoints/latest")
    # Replaced the way checkpoints are (write + rename) right after logging: the snapshot holds.
    (tmp_path / "new.json").write_text("written after logging")
    os.replace(tmp_path / "new.json", tmp_path / "ckpt" / "state.json")
    t.close()

    c = MlflowClient(mlflow_server.uri)
    run = c.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "round-trip"
    assert run.data.params == {"model.arch": "dcgan", "model.z_dim": "64", "seed": "7"}
    assert run.data.tags["data_version"] == "mnist-v3"
    hist = c.get_metric_history(t.run_id, "loss/G")
    assert sorted((m.step, m.value) for m in hist) == sorted(losses.items())
    pngs = [f.path for f in c.list_artifacts(t.run_id, "images") if f.path.endswith(".png")]
    assert len(pngs) == 1 and "samples+step+150+" in pngs[0]
    from PIL import Image

    back = np.asarray(Image.open(c.download_artifacts(t.run_id, pngs[0], str(tmp_path / "dl"))))
    np.testing.assert_array_equal(back, grid)
    state = c.download_artifacts(t.run_id, "checkpoints/latest/state.json", str(tmp_path / "dl"))
    assert open(state).read() == '{"step": 300}'
    assert not (tmp_path / "spool").exists()


def test_retried_upload_is_not_stored_twice(mlflow_server, tmp_path):
    """A log_batch whose answer was lost gets resent: reconciling drops what the server holds."""
    t = make_tracker(mlflow_server, tmp_path, "lost-ack")
    sender = Sender(MlflowClient(mlflow_server.uri), t.run_id)
    sender.send([Record("metric", "x", float(s), s, 1000 + s) for s in range(10)], reconcile=False)
    sender.send([Record("metric", "x", float(s), s, 1000 + s) for s in range(5, 15)], reconcile=True)
    t.close()
    assert steps_of(t.client, t.run_id, "x") == list(range(15))


def test_outage_mid_run_loses_and_repeats_nothing(mlflow_server, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="gantry.tracking")
    t = make_tracker(mlflow_server, tmp_path, "outage")
    for s in range(20):
        t.log_metrics({"loss": float(s), "kimg": s / 10}, s)
    wait_for_steps(t.client, t.run_id, "loss", 20)
    mlflow_server.stop()
    try:
        t0 = time.perf_counter()
        for s in range(20, 60):
            t.log_metrics({"loss": float(s), "kimg": s / 10}, s)
            time.sleep(0.05)  # the worker tries, fails and backs off meanwhile
        assert time.perf_counter() - t0 < 5.0, "logging blocked while the server was down"
    finally:
        mlflow_server.start()
    for s in range(60, 80):
        t.log_metrics({"loss": float(s), "kimg": s / 10}, s)
    t.close()
    for key in ("loss", "kimg"):
        assert steps_of(t.client, t.run_id, key) == list(range(80))
    assert t.client.get_run(t.run_id).info.status == "FINISHED"
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
    assert not (tmp_path / "spool").exists()


@pytest.mark.parametrize("where", ["disk", "s3"])
def test_down_at_close_spools_and_sync_uploads(mlflow_server, tmp_path, capsys, request, where):
    """The spool stays on this disk, or, for a run dir on an object store, is published there
    (its node may be gone by the time anyone syncs) and synced from there."""
    from pipeline import storage

    spool_to = f"{request.getfixturevalue('s3').bucket('spool')}/run/mlflow-spool" if where == "s3" else None
    t = make_tracker(mlflow_server, tmp_path, "spooled", close_timeout=1.0, backlog=40, spool_to=spool_to)
    for s in range(10):
        t.log_metrics({"loss": float(s)}, s)
    wait_for_steps(t.client, t.run_id, "loss", 10)
    mlflow_server.stop()
    try:
        for s in range(10, 100):
            t.log_metrics({"loss": float(s)}, s)
        t.log_image(np.full((8, 8, 1), 200, np.uint8), "samples", step=99)
        (tmp_path / "notes.txt").write_text("kept")
        t.log_artifact(str(tmp_path / "notes.txt"), "extra")
        t.close(status="FAILED")
        spools = list((tmp_path / "spool").glob("*.jsonl"))
        if spool_to:
            assert spools == [] and storage.list_names(spool_to) == [f"{t.run_id}.files", f"{t.run_id}.jsonl"]
            spools = [storage.join(spool_to, f"{t.run_id}.jsonl")]
        else:
            assert [p.name for p in spools] == [f"{t.run_id}.jsonl"]
    finally:
        mlflow_server.start()
    # The backlog (40 records) held the newest points; the oldest were dropped, and counted.
    assert t.dropped > 0

    assert gantry(["tracking", "sync", str(spool_to or spools[0])]) == 0
    assert "uploaded" in capsys.readouterr().out
    stored = steps_of(t.client, t.run_id, "loss")
    assert len(stored) == len(set(stored)) == 100 - t.dropped
    assert stored[:10] == list(range(10)) and stored[-1] == 99
    assert t.client.get_run(t.run_id).info.status == "FAILED"
    assert any("samples+step+99+" in f.path for f in t.client.list_artifacts(t.run_id, "images"))
    assert [f.path for f in t.client.list_artifacts(t.run_id, "extra")] == ["extra/notes.txt"]
    assert not storage.exists(str(spools[0]))
    if spool_to:
        assert storage.list_names(spool_to) == []
    assert gantry(["tracking", "sync", str(spools[0])]) == 1  # gone: a clear error, not a crash


def test_resume_continues_the_same_run(mlflow_server, tmp_path, caplog):
    first = make_tracker(mlflow_server, tmp_path, "resumable")
    first.log_params({"g_optim": {"lr": 0.001}})
    for s in range(25):
        first.log_metrics({"loss": float(s)}, s)
    first.close(status="KILLED")

    again = make_tracker(mlflow_server, tmp_path, "resumable", resume_run_id=first.run_id)
    assert again.run_id == first.run_id and again.start_step == 25
    assert again.client.get_run(again.run_id).info.status == "RUNNING"
    caplog.set_level(logging.WARNING, logger="gantry.tracking")
    again.log_metrics({"loss": -1.0}, 24)  # already logged before the restart: dropped
    # a param keeps its first value (MLflow refuses a change); a new one is logged, and the
    # batch it travels in is not refused
    again.log_params({"g_optim": {"lr": 0.002, "beta1": 0.5}})
    for s in range(again.start_step, 40):
        again.log_metrics({"loss": float(s)}, s)
    again.close()
    hist = again.client.get_metric_history(first.run_id, "loss")
    assert sorted((m.step, m.value) for m in hist) == [(s, float(s)) for s in range(40)]
    assert again.client.get_run(first.run_id).data.params == {"g_optim.lr": "0.001", "g_optim.beta1": "0.5"}
    assert any("step 24" in r.getMessage() for r in caplog.records)


def test_resume_of_unknown_run_is_a_clear_error(mlflow_server, tmp_path, monkeypatch):
    from pipeline.errors import GantryError

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with pytest.raises(GantryError, match="cannot resume MLflow run 'nope'"):
        make_tracker(mlflow_server, tmp_path, "x", resume_run_id="nope")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # a tracker that never opened puts it back


def test_http_settings_hold_while_a_tracker_is_open(mlflow_server, tmp_path, monkeypatch):
    # The trackers' no-retry setting is process-wide; a registry download after training (same
    # process, `gantry retrain`) failed a whole checkpoint on one slow file while it leaked.
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "33")
    a, b = make_tracker(mlflow_server, tmp_path, "a"), make_tracker(mlflow_server, tmp_path, "b")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "33"
    a.close()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"  # b still uploads on its own terms
    b.close()
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "33"
