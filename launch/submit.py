"""Training as a Ray job: the Jobs API of a running cluster (its dashboard, `http://HOST:8265`).

The job runs `gantry train CONFIG [overrides] [--workers N]` on the cluster's head node, in a
copy of the local working directory (uploaded by Ray; `.git/` and `.gitignore`d paths such as
`.venv/` and `runs/` stay home), so the config and any local edits travel with it. The `gantry` command itself
must be installed on the cluster (it is in the project's images). Tracking settings travel as
environment variables: every `MLFLOW_*` and `AWS_*` variable set here, plus any named with
`--env`. Their values go into the job's runtime env, visible to whoever can read the cluster's
dashboard, but never into this command's output. A cluster with Ray's token authentication
needs `RAY_AUTH_MODE=token` and the token (`RAY_AUTH_TOKEN` or `~/.ray/auth_token`) here.

Stopping (`gantry jobs stop`): Ray sends SIGTERM to the job's `gantry train`, which ends the run
cleanly (tracking closed as KILLED, exit 143; see launch/cli.py), and SIGKILL after
`RAY_JOB_STOP_WAIT_TIME_S` seconds (STOP_GRACE_S here unless `--env` passes another value).
"""
from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

from pipeline.errors import GantryError

PASS_THROUGH_PREFIXES = ("MLFLOW_", "AWS_")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 60.0
# How long Ray's job supervisor waits after its SIGTERM before it SIGKILLs the job (Ray's own
# default is 3 s): time for `gantry train` to close its tracking run, flush and exit.
STOP_GRACE_S = 30
FAILED_TAIL_LINES = 20


def connect(address: str | None):
    """A JobSubmissionClient for `address` (default RAY_ADDRESS); one-line error if unreachable."""
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise GantryError("no Ray cluster given: pass --address http://HOST:8265 or set RAY_ADDRESS")
    from ray.exceptions import AuthenticationError

    try:
        client = JobSubmissionClient(address)
        client.list_jobs()  # the version check above is open to all; this one needs the token
    except AuthenticationError:
        raise GantryError(f"the Ray cluster at {address} wants a token: set RAY_AUTH_MODE=token and its token "
                          f"in RAY_AUTH_TOKEN or ~/.ray/auth_token") from None
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise GantryError(f"cannot reach the Ray Jobs API at {address}: {str(e).splitlines()[0]}") from None
    return client


def entrypoint(config: str, overrides: list[str], workers: int | None, verbose: bool = False) -> str:
    """The job's shell command. `exec`, so that no shell sits between Ray and `gantry train`.

    Why: Ray (2.60, dashboard/modules/job/job_supervisor.py) runs the entrypoint with
    `Popen(cmd, shell=True, start_new_session=True)` and stops a job by signalling the PIDs it
    sees at that moment, `[shell] + shell.children(recursive=True)`: SIGTERM, then SIGKILL after
    RAY_JOB_STOP_WAIT_TIME_S. It never signals the process group. Debian's /bin/sh (dash 0.5.12)
    forks the command instead of exec'ing it, so a stop that lands while the job is starting (a
    stop sent while the job is PENDING is acted on the moment the entrypoint starts) can list
    only the shell: the shell dies of the SIGTERM and the `gantry train` it forks a moment later
    is never signalled, reparented to PID 1, and trains on. Ray's backstop, a watcher shell that
    kills the group once the supervisor exits, is itself SIGKILLed when the supervisor exits
    (the core worker kills its children on exit: "Try killing all child processes of this
    worker as it exits"), so nothing ever ends it; the job reads STOPPED all the same. With
    `exec` the PID Ray started and signals is `gantry train` itself, at every moment."""
    words = ["gantry", "train", config, *overrides] + (["--workers", str(workers)] if workers else []) \
        + (["--verbose"] if verbose else [])
    return "exec " + " ".join(shlex.quote(w) for w in words)


def passed_env(extra: list[str]) -> dict[str, str]:
    """The variables the job gets from this environment (see the module docstring)."""
    missing = [name for name in extra if name not in os.environ]
    if missing:
        raise GantryError(f"--env {missing[0]}: not set in this environment")
    return {k: v for k, v in os.environ.items() if k.startswith(PASS_THROUGH_PREFIXES) or k in extra}


def relative_config(config: str, working_dir: Path) -> str:
    """CONFIG as the job will see it: a path inside the uploaded working directory."""
    path = Path(config).resolve()
    try:
        return path.relative_to(working_dir.resolve()).as_posix()
    except ValueError:
        raise GantryError(f"{config} is outside the working directory {working_dir} that is uploaded; "
                          f"move it there or pass --working-dir") from None


def submit(client, config: str, overrides: list[str], workers: int | None, working_dir: Path,
           env: dict[str, str], verbose: bool = False) -> str:
    """Submit the training job; returns its id. The job's log is `gantry train`'s console (see
    launch/console.py), all of it with `verbose`."""
    command = entrypoint(relative_config(config, working_dir), overrides, workers, verbose)
    # The job supervisor actor gets the job's env_vars too: that is where it reads its grace.
    runtime_env = {"working_dir": str(working_dir),
                   "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S), **env}}
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(entrypoint=command, runtime_env=runtime_env)
        except RuntimeError as e:  # what the client raises for an HTTP error from the cluster
            # A head that has just started answers before its node agent is up; that passes.
            if "No available agent" in str(e) and time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            raise GantryError(f"the cluster refused the job: {str(e).splitlines()[0]}") from None


def wait_ended(client, job_id: str, timeout: float) -> str | None:
    """The job's final status once it has one, or None if it has none within `timeout` s.
    A stopped job turns STOPPED only after every process Ray signalled has exited or been
    SIGKILLed (after its grace), so STOPPED means the job's processes have ended."""
    deadline = time.monotonic() + timeout
    while (status := client.get_job_status(job_id).value) not in TERMINAL:
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)
    return status


def follow(client, job_id: str, verbose: bool = False) -> str:
    """Stream the job's log to stdout until it ends; returns its final status. The log is the
    console of the job's `gantry train` plus lines of Ray's job manager ("Runtime env is setting
    up"): only gantry's lines are shown (launch/console.py), all of it with `verbose`."""
    from launch.console import console_line

    def show(lines: list[str]) -> None:
        shown = (console_line(line) for line in lines)
        sys.stdout.writelines(line + "\n" for line in shown if line is not None)

    async def tail() -> None:
        partial = ""
        async for chunk in client.tail_job_logs(job_id):
            if verbose:
                sys.stdout.write(chunk)
            else:
                *lines, partial = (partial + chunk).split("\n")
                show(lines)
            sys.stdout.flush()
        show([partial])

    asyncio.run(tail())
    # The log stream closes when the job ends, but its status may lag by a moment.
    while (status := client.get_job_status(job_id).value) not in TERMINAL:
        time.sleep(0.5)
    if status != "SUCCEEDED" and not verbose:  # why it failed may be no gantry line at all
        tail_lines = client.get_job_logs(job_id).splitlines()[-FAILED_TAIL_LINES:]
        sys.stdout.write(f"last {len(tail_lines)} lines of the job's log:\n" + "".join(f"  {ln}\n" for ln in tail_lines))
    return status
