"""`gantry jobs list|stop [JOB_ID] --address http://HOST:8265 [--timeout S]`: the Ray jobs of a cluster.

`stop` waits until the job has ended (its final status, normally STOPPED, which Ray records only
once the job's processes have exited or been SIGKILLed) and exits 1 if it has not within
`--timeout` seconds (0: request the stop and return at once)."""
from __future__ import annotations

import time

# Ray's grace between SIGTERM and SIGKILL (launch/submit.py STOP_GRACE_S, 30 s) and some margin.
STOP_TIMEOUT_S = 90.0


def register(sub) -> None:
    p = sub.add_parser("jobs", help="list or stop the jobs of a Ray cluster")
    p.add_argument("action", choices=["list", "stop"])
    p.add_argument("job_id", nargs="?", help="the job to stop")
    p.add_argument("--address", help="Ray Jobs API, http://HOST:8265 (default: RAY_ADDRESS)")
    p.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S, metavar="S",
                   help=f"stop: seconds to wait for the job to end (default {STOP_TIMEOUT_S:g}; 0: do not wait)")
    p.set_defaults(func=run)


def run(args) -> int:
    from launch.submit import connect, wait_ended
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
    print(f"job {args.job_id}: " + ("stop requested" if stopped else "already finished"), flush=True)
    if args.timeout <= 0:
        return 0
    # Ray's stop is fire-and-forget: the request returns before the job's processes get their
    # signal. Waiting for the final status is what tells the user the job really ended.
    status = wait_ended(client, args.job_id, args.timeout)
    if status is None:
        raise GantryError(f"job {args.job_id} has not ended {args.timeout:g} s after the stop request")
    print(f"job {args.job_id}: {status}")
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
