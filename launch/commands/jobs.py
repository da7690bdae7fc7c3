"""`gantry jobs list|stop [JOB_ID] --address http://HOST:8265`: the Ray jobs of a cluster."""
from __future__ import annotations

import time


def register(sub) -> None:
    p = sub.add_parser("jobs", help="list or stop the jobs of a Ray cluster")
    p.add_argument("action", choices=["list", "stop"])
    p.add_argument("job_id", nargs="?", help="the job to stop")
    p.add_argument("--address", help="Ray Jobs API, http://HOST:8265 (default: RAY_ADDRESS)")
    p.set_defaults(func=run)


def run(args) -> int:
    from launch.submit import connect
    from pipeline.errors import GantryError

    if args.action == "stop" and not args.job_id:
        raise GantryError("jobs stop: give the JOB_ID to stop")
    client = connect(args.address)
    if args.action == "list":
        print(table(client.list_jobs()))
        return 0
    try:
        stopped = client.stop_job(args.job_id)
    except RuntimeError as e:  # an HTTP error, e.g. 404 for an unknown id
        raise GantryError(f"cannot stop job {args.job_id}: {str(e).splitlines()[0]}") from None
    print(f"job {args.job_id}: " + ("stop requested" if stopped else "already finished"))
    return 0


def table(jobs) -> str:
    """One row per job, newest first."""
    jobs = sorted(jobs, key=lambda j: j.start_time or 0, reverse=True)
    rows = [("JOB ID", "STATUS", "START", "ENTRYPOINT")] + [
        (j.submission_id or j.job_id or "", j.status.value,
         time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "",
         j.entrypoint)
        for j in jobs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[3]]) for r in rows)
