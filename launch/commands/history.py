"""`gantry history`: the runs of an experiment, newest first, one row each.

Columns: name, status, start (local time), duration, kimg (last value of metric `kimg`), best,
data version (tag `data_version`), and `*` on the run whose registered model version holds the
alias `champion`.

Best is the run's best quality score, chosen this way: the minimum of metric `fid` over the run
(lower is better) if the run logged one, else the maximum of `modes_covered` (toy mixtures,
higher is better), else empty. The value carries its metric name, so rows compare at a glance.

A sweep (`gantry sweep`) is one row: its parent run, named `sweep <name> (N trials)`, with the
best trial's value of the sweep's metric; its trials' runs are not listed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from launch.registry import CHAMPION
from pipeline.errors import GantryError


def register(subparsers) -> None:
    p = subparsers.add_parser("history", help="list the runs of an experiment")
    p.add_argument("--experiment", default="gantry", help="experiment name (default: gantry)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--uri", help="tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.set_defaults(func=run)


def run(args) -> int:
    from mlflow import MlflowClient

    from pipeline.tracking.store import resolve_uri

    uri = resolve_uri(args.uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise GantryError(f"no tracking store at {uri}: train something first, or pass --uri")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        known = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise GantryError(f"no experiment {args.experiment!r} at {uri} (experiments: {known})")
    rows = history(client, exp.experiment_id)
    print(json.dumps(rows, indent=1) if args.json else table(rows))
    return 0


def history(client, experiment_id: str) -> list[dict]:
    champions = champion_runs(client)
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=1000)
    trials: dict[str, int] = {}
    for r in runs:
        parent = r.data.tags.get("mlflow.parentRunId")
        if parent:
            trials[parent] = trials.get(parent, 0) + 1
    return [
        {
            "run_id": r.info.run_id,
            "name": (f"{r.info.run_name} ({trials.get(r.info.run_id, 0)} trials)" if "gantry_sweep" in r.data.tags
                     else r.info.run_name),
            "status": r.info.status,
            "start": r.info.start_time / 1000,
            "duration_s": ((r.info.end_time or time.time() * 1000) - r.info.start_time) / 1000,
            "kimg": r.data.metrics.get("kimg"),
            "best": best_metric(client, r),
            "data_version": r.data.tags.get("data_version"),
            "champion": r.info.run_id in champions,
        }
        for r in runs if "mlflow.parentRunId" not in r.data.tags
    ]


def best_metric(client, run) -> dict | None:
    """{"metric", "value"}: a sweep's best trial, else min fid, else max modes_covered (see the
    module docstring)."""
    if "gantry_sweep" in run.data.tags:
        best = run.data.metrics.get("best")
        return None if best is None else {"metric": run.data.tags["gantry_sweep_metric"].split()[-1], "value": best}
    for key, pick in (("fid", min), ("modes_covered", max)):
        if key in run.data.metrics:
            return {"metric": key, "value": pick(m.value for m in client.get_metric_history(run.info.run_id, key))}
    return None


def champion_runs(client) -> set[str]:
    """Ids of the runs whose registered model versions hold the `champion` alias."""
    runs = set()
    for model in client.search_registered_models():
        if CHAMPION in model.aliases:
            runs.add(client.get_model_version(model.name, model.aliases[CHAMPION]).run_id)
    return runs


def table(rows: list[dict]) -> str:
    head = ("", "NAME", "STATUS", "START", "DURATION", "KIMG", "BEST", "DATA", "RUN ID")
    lines = [head] + [
        (
            "*" if r["champion"] else "",
            r["name"] or "",
            r["status"],
            time.strftime("%Y-%m-%d %H:%M", time.localtime(r["start"])),
            _duration(r["duration_s"]),
            "" if r["kimg"] is None else f"{r['kimg']:.1f}",
            "" if r["best"] is None else f"{r['best']['metric']} {r['best']['value']:.4g}",
            r["data_version"] or "",
            r["run_id"],
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _duration(seconds: float) -> str:
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"
