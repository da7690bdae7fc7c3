"""Quality over seeds: `gantry train` a config once per seed, each run timed end to end (process
start to exit), then `gantry eval --json` on its final checkpoint.

Prints one JSON line: per seed the modes covered and % high-quality samples (2-D toys) or the
eval metrics (images, e.g. FID), their medians and worst seeds, and for toys how many seeds cover
every mode with at least --hq-bar % high-quality samples. A run that fails (a config error, a
health abort) is recorded with its exit code and left out of the medians.

Usage: python tests/bench/quality.py configs/toy-ring.yaml [more configs] [--seeds 10] [--first-seed 1]
           [--set loss.kind=rpgan loss.r2_gamma=0.01 ...] [--jobs 2] [--eval-n 2000]
--jobs runs seeds side by side with the cores split between them: faster in total, but its
seconds are not a single run's time on this machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LOWER_IS_BETTER = {"fid", "kid", "l1"}


def run_seed(config: str, seed: int, out: str, overrides: list, eval_n, threads: int) -> dict:
    name = f"{Path(config).stem}-{seed}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "launch.cli", "train", config, f"seed={seed}", f"name={name}",
                        f"train.out_dir={out}", *overrides], capture_output=True, text=True, env=env)
    row: dict = {"seed": seed, "seconds": round(time.perf_counter() - t0, 1)}
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
        return {**row, "error": f"train exit {r.returncode}: {tail[0]}"}
    ev = [sys.executable, "-m", "launch.cli", "eval", f"{out}/{name}/checkpoints", "--json"]
    r = subprocess.run(ev + (["--n", str(eval_n)] if eval_n else []), capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {**row, "error": f"eval exit {r.returncode}: {r.stderr.strip()[-200:]}"}
    scores = json.loads(r.stdout)
    if "modes_covered" in scores:
        return {**row, "modes": int(scores["modes_covered"]), "of": int(scores["modes_total"]),
                "hq_pct": round(scores["hq_pct"], 2)}
    return {**row, **{k: round(v, 4) for k, v in scores.items()}}


def summarize(rows: list, hq_bar: float) -> dict:
    done = [r for r in rows if "error" not in r]
    keys = [k for k in (done[0] if done else {}) if k not in ("seed", "of")]
    summary: dict = {"failed": len(rows) - len(done)}
    if not done:
        return summary
    summary["median"] = {k: round(statistics.median(r[k] for r in done), 4) for k in keys}
    worst = {k: (max if k in LOWER_IS_BETTER or k == "seconds" else min)(r[k] for r in done) for k in keys}
    summary["worst"] = worst
    if "modes" in done[0]:
        summary["all_modes"] = sum(r["modes"] == r["of"] for r in done)
        summary["passing"] = sum(r["modes"] == r["of"] and r["hq_pct"] >= hq_bar for r in done)
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="+", help="config files, e.g. configs/toy-ring.yaml")
    ap.add_argument("--seeds", type=int, default=10, help="how many seeds (default 10)")
    ap.add_argument("--first-seed", type=int, default=1, help="seeds run from here (default 1)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained at once (cores split between them)")
    ap.add_argument("--eval-n", type=int, help="samples to score (default: gantry eval's)")
    ap.add_argument("--hq-bar", type=float, default=95.0, help="toys: %% high-quality a passing seed needs")
    args = ap.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    result: dict = {"overrides": args.set, "jobs": args.jobs, "configs": {}}
    with tempfile.TemporaryDirectory() as out, ThreadPoolExecutor(args.jobs) as pool:
        for config in args.configs:
            futures = [pool.submit(run_seed, config, s, out, args.set, args.eval_n, threads)
                       for s in range(args.first_seed, args.first_seed + args.seeds)]
            rows = []
            for f in futures:
                rows.append(f.result())
                print(rows[-1], file=sys.stderr, flush=True)
            result["configs"][Path(config).stem] = {"seeds": rows, **summarize(rows, args.hq_bar)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
