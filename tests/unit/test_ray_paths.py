"""What the Ray driver hands its workers: they run in Ray's session directory, not the driver's,
so every relative location, the default SQLite tracking store included, is made absolute."""
from pathlib import Path

from launch.ray_train import absolute
from pipeline.config import load_config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "mnist-dcgan.yaml"


def test_relative_locations_and_the_default_store_becomeabsolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg, resume = absolute(load_config(CONFIG, ["data.path=data/x", "train.out_dir=runs"]), "runs/a/ckpt-1")
    assert cfg.tracking.uri == f"sqlite:///{tmp_path}/mlruns.db"  # where `gantry history` looks
    assert (cfg.data.path, cfg.train.out_dir, resume) == (str(tmp_path / "data/x"), str(tmp_path / "runs"),
                                                         str(tmp_path / "runs/a/ckpt-1"))
    server, _ = absolute(load_config(CONFIG, ["tracking.uri=http://127.0.0.1:5000"]), None)
    assert server.tracking.uri == "http://127.0.0.1:5000"
