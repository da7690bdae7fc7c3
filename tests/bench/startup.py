"""Start-up of `gantry train configs/mnist-dcgan.yaml --workers 2` on an embedded Ray: seconds
from the command's launch to the end of the first training step.

The first step's end is the timestamp MLflow stores with the first metric (`train.log_every=1`,
logged by rank 0 right after step 1), so nothing in gantry is instrumented for this and any
version of it can be timed the same way. Runs the command `--runs` times on MNIST shards built
in a temp dir and prints one JSON object with every run and the median.
Usage: python tests/bench/startup.py [--runs 3] [--workers 2] [--launcher ray]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.shards import build_shards
from train_throughput import gantry_train


def first_step_s(shards: Path, tmp: Path, tag: str, workers: int, launcher: str) -> dict:
    args = ["configs/mnist-dcgan.yaml", f"data.path={shards}", f"name={tag}", f"train.out_dir={tmp / 'runs'}",
            "train.kimg=0.256", "train.batch=32", "train.log_every=1", "train.eval_kimg=1000",
            "train.checkpoint_kimg=1000", "eval.metrics=[]", "train.precision=fp32",
            "--workers", str(workers), "--launcher", launcher] + (["--strategy", "ddp"] if workers > 1 else [])
    launched = time.time()
    client, run = gantry_train(args, f"sqlite:///{tmp / 'mlflow.db'}", "startup", tag)
    wall = time.time() - launched
    first = min(client.get_metric_history(run.info.run_id, "kimg"), key=lambda m: m.step)
    return {"first_step_s": round(first.timestamp / 1000 - launched, 1), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--launcher", default="ray", choices=["ray", "local"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = tmp / "shards"
        build_shards("mnist", shards, 32, shard_size=256, pad=True, limit=2048, workers=1)
        runs = [first_step_s(shards, tmp, f"run{i}", args.workers, args.launcher) for i in range(args.runs)]
    print(json.dumps({"command": f"gantry train configs/mnist-dcgan.yaml --workers {args.workers} --launcher {args.launcher}",
                      "runs": runs, "median_first_step_s": statistics.median(r["first_step_s"] for r in runs),
                      "median_wall_s": statistics.median(r["wall_s"] for r in runs)}))


if __name__ == "__main__":
    main()
