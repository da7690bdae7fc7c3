"""The 2-D mixture benchmark: `gantry train` on toy-ring and toy-grid for seeds 1-5, each run
timed end to end (process start to exit), then `gantry eval` on its final checkpoint.

Prints one JSON object: per config and seed, modes covered, % high-quality samples, seconds.
Usage: python tests/bench/toy_benchmark.py [--seeds 1 2 3 4 5] [--configs toy-ring toy-grid]
                                          [--set health.enabled=false ...]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--configs", nargs="+", default=["toy-ring", "toy-grid"])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    args = ap.parse_args()
    results: dict = {"overrides": args.set}
    with tempfile.TemporaryDirectory() as out:
        for name in args.configs:
            rows = []
            for seed in args.seeds:
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "launch.cli", "train", f"configs/{name}.yaml", f"seed={seed}",
                                f"name={name}-{seed}", f"train.out_dir={out}", *args.set], check=True, capture_output=True)
                seconds = time.perf_counter() - t0
                r = subprocess.run([sys.executable, "-m", "launch.cli", "eval", f"{out}/{name}-{seed}/checkpoints",
                                    "--json"], check=True, capture_output=True, text=True)
                scores = json.loads(r.stdout)
                rows.append({"seed": seed, "modes": scores["modes_covered"], "of": scores["modes_total"],
                             "hq_pct": round(scores["hq_pct"], 2), "seconds": round(seconds, 1)})
                print(rows[-1], file=sys.stderr, flush=True)
            results[name] = rows
    print(json.dumps(results))


if __name__ == "__main__":
    main()
