"""The driver's console (launch/console.py): gantry's lines on the console, everything else in the
log file, progress redrawn in place on a terminal and thinned out elsewhere."""
import os
import pty
import subprocess
import sys
import textwrap

from launch.console import console_line

# What a process of a run writes: this process's prints and logging, a child's output (Ray's
# daemons and DataLoader workers are children), and worker lines relayed by Ray with its prefix.
SCRIPT = textwrap.dedent("""
    import logging, subprocess, sys, time
    from launch import console as c
    from pipeline import console as say
    c.PLAIN_PROGRESS_EVERY_S = 0.2
    with c.Console(sys.argv[1]) as con:
        logging.getLogger("mlflow.store.db.utils").warning("Creating initial MLflow database tables...")
        print("2026-12-01 05:46:08,630\\tWARNING authentication_token_setup.py:85 -- Token authentication is enabled")
        subprocess.run(["sh", "-c", "echo '[core_worker.cc:1] error PreemptionWatcher' >&2; echo child-noise"])
        print("\\x1b[36m(RayTrainWorker pid=29518)\\x1b[0m gantry: mnist: fp32, 2 workers (ddp) on cpu")
        print("\\x1b[36m(RayTrainWorker pid=29518, ip=10.0.0.2)\\x1b[0m Reporting training result 1")
        for i in range(4):
            say.progress(f"kimg {i}/4")
            time.sleep(0.09)
        say.say("saved ckpt-000000016 at kimg 0.51")
        print("(RayTrainWorker pid=7) gantry: warning: MLflow down", file=sys.stderr)
        print("(RayTrainWorker pid=8) gantry: warning: MLflow down [repeated 1x across cluster]", file=sys.stderr)
        sys.stdout.write("no newline at the end")
    print("after: " + con.location)
""")


def run(log, **kw):
    return subprocess.run([sys.executable, "-c", SCRIPT, str(log)], text=True, **kw)


def test_console_line_strips_ray_prefix_colour_and_dedup_suffix():
    assert console_line("\x1b[36m(RayTrainWorker pid=1, ip=10.1.2.3)\x1b[0m gantry: saved x") == "gantry: saved x"
    # a line Ray marks as repeated was shown when it first came
    assert console_line("(TrainController pid=4) gantry: a [repeated 3x across cluster] (Ray deduplicates…)") is None
    assert console_line("(RayTrainWorker pid=1) Reporting training result 1") is None
    assert console_line("INFO mlflow: gantry: not at the start") is None


def test_only_gantry_lines_reach_the_console_and_everything_reaches_the_log(tmp_path):
    log = tmp_path / "run.log"
    r = run(log, capture_output=True)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    # not a terminal: the first progress line, then at most one per PLAIN_PROGRESS_EVERY_S (0.2 s
    # here, against one every 0.09 s)
    progress = [ln for ln in out if ln.startswith("gantry: progress ")]
    assert progress[0] == "gantry: progress kimg 0/4" and len(progress) < 4, out
    assert out[0] == "gantry: mnist: fp32, 2 workers (ddp) on cpu"
    assert [ln for ln in out if not ln.startswith("gantry: progress ")] == [
        "gantry: mnist: fp32, 2 workers (ddp) on cpu", "gantry: saved ckpt-000000016 at kimg 0.51", f"after: {log}"]
    assert r.stderr.splitlines() == ["gantry: warning: MLflow down"]  # on the stream it came on
    logged = log.read_text()
    for noise in ["Creating initial MLflow database tables", "Token authentication", "PreemptionWatcher",
                  "child-noise", "Reporting training result 1", "no newline at the end",
                  "gantry: saved ckpt-000000016"]:
        assert noise in logged, noise


def test_on_a_terminal_progress_is_redrawn_in_place(tmp_path):
    leader, follower = pty.openpty()
    r = run(tmp_path / "run.log", stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal's other end is closed and drained
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    screen = b"".join(chunks).decode()
    assert r.returncode == 0
    # every progress line overwrites the one before it; the line printed meanwhile clears it first
    for i in range(4):
        assert f"\r\x1b[Kgantry: progress kimg {i}/4" in screen
    assert "\r\x1b[Kgantry: saved ckpt-000000016 at kimg 0.51\r\n\r\x1b[Kgantry: progress kimg 3/4" in screen
    assert "Reporting training result" not in screen and "child-noise" not in screen
