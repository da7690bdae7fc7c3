"""Scaling and launcher overhead of `gantry train` on configs/mnist-dcgan.yaml, end to end.

Runs the CLI three times on the same MNIST shards (built in a temp dir) at a fixed per-worker
batch: local launcher x 1 worker, Ray x 1 worker (both strategy single), Ray x 2 workers (ddp).
Steady-state step time comes from the timestamps of two mid-run checkpoints (meta.json), so
start-up, the first steps and the final evaluation are excluded; wall time is the whole command.
Prints one JSON object.
Usage: python tests/bench/scaling.py [--kimg 4.096] [--batch 32] [--precision auto]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline import checkpoint
from pipeline.shards import build_shards

REPO = Path(__file__).resolve().parents[2]


def run(shards: Path, out: Path, launcher: str, workers: int, batch: int, kimg: float, precision: str) -> dict:
    strategy = "ddp" if workers > 1 else "single"
    cmd = [sys.executable, "-m", "launch.cli", "train", "configs/mnist-dcgan.yaml", f"data.path={shards}",
           f"train.out_dir={out}", f"train.kimg={kimg}", f"train.batch={batch * workers}",
           f"train.checkpoint_kimg={kimg / 4}", "train.keep_checkpoints=4", "train.eval_kimg=1000",
           f"train.precision={precision}", "tracking.enabled=false",
           "--workers", str(workers), "--strategy", strategy, "--launcher", launcher]
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if r.returncode:
        sys.exit(f"{launcher} x{workers} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    # checkpoints at 1/4, 2/4, 3/4, 4/4 of the run: time the 2/4 -> 3/4 stretch
    metas = [checkpoint.read_meta(p) for p in checkpoint.list_checkpoints(out / "mnist-dcgan" / "checkpoints")]
    a, b = metas[1], metas[2]
    steps, dt = b["step"] - a["step"], b["time"] - a["time"]
    return {"launcher": launcher, "workers": workers, "strategy": strategy, "batch_per_worker": batch,
            "step_ms": round(1000 * dt / steps, 1), "img_per_s": round(steps * batch * workers / dt, 1),
            "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kimg", type=float, default=4.096)
    ap.add_argument("--batch", type=int, default=32, help="per-worker batch")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = tmp / "shards"
        build_shards("mnist", shards, 32, shard_size=256, pad=True, limit=4096, workers=1)
        runs = [run(shards, tmp / name, launcher, workers, args.batch, args.kimg, args.precision)
                for name, launcher, workers in [("local1", "local", 1), ("ray1", "ray", 1), ("ray2", "ray", 2)]]
    local1, ray1, ray2 = runs
    print(json.dumps({
        "config": "configs/mnist-dcgan.yaml", "kimg": args.kimg, "precision": args.precision, "runs": runs,
        "speedup_2_workers": round(ray2["img_per_s"] / ray1["img_per_s"], 2),
        "ray_launcher_overhead_s": round(ray1["wall_s"] - local1["wall_s"], 1),
        "ray_over_local_1_worker": round(ray1["img_per_s"] / local1["img_per_s"], 3),
        "ray_step_time_ratio": round(ray1["step_ms"] / local1["step_ms"], 2),
    }))


if __name__ == "__main__":
    main()
