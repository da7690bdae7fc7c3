"""launch/examples/ as a SLURM node runs them: each sbatch script under a stand-in `srun` (node 1
of 2) and `scontrol`, its launcher's command line parsed by that launcher's own parser, and, for
`accelerate launch`, the environment accelerate gives the processes read by gantry's env launcher."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from torch.distributed.run import get_args_parser

from launch.env_launch import group_config
from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "launch" / "examples"
# srun runs its command as task 1 of the job; the launchers record how they were called
STANDINS = {
    "srun": '#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nSLURM_NODEID=1 exec "$@"\n',
    "scontrol": "#!/bin/bash\necho node-a\necho node-b\n",
    "accelerate": '#!/bin/bash\nprintf "%q " "$@" > "$RECORD"\n',
    "torchrun": '#!/bin/bash\nprintf "%q " "$@" > "$RECORD"\n',
}


def launched(tmp_path, script: str, *args: str, **env: str) -> list[str]:
    """The launcher's arguments when `script` runs on node 1 of 2 with `args`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STANDINS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    record = tmp_path / "record"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record), "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_JOB_ID": "4242", **env}
    r = subprocess.run(["bash", str(EXAMPLES / script), *args], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return shlex.split(record.read_text())


RUN = ["configs/mnist-dcgan.yaml", "train.out_dir=s3://bucket/runs", "train.kimg=2"]


def test_torchrun_script_starts_every_gpu_of_the_node_on_one_rendezvous(tmp_path):
    args = get_args_parser().parse_args(launched(tmp_path, "slurm-torchrun.sbatch", *RUN))
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend) == ("2", "8", "c10d")
    assert (args.rdzv_endpoint, args.rdzv_id) == ("node-a:29500", "4242")
    assert args.module and args.training_script == "launch.cli"
    assert args.training_script_args == ["train", *RUN]


@pytest.mark.parametrize("config,precision,strategy", [
    ("accelerate-2nodes.yaml", "bf16", ("ddp", None)),
    ("accelerate-2nodes-deepspeed.yaml", "bf16", ("deepspeed", 1)),
])
def test_accelerate_script_and_config_become_this_run(tmp_path, config, precision, strategy):
    subcommand, *argv = launched(tmp_path, "slurm-accelerate.sbatch", *RUN, ACCELERATE_CONFIG=str(EXAMPLES / config))
    assert subcommand == "launch"
    args, defaults, precision_from_config = _validate_launch_command(launch_command_parser().parse_args(argv))
    assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 16, 1)
    assert (args.main_process_ip, args.main_process_port) == ("node-a", 29500)
    assert args.module and args.training_script == "launch.cli" and args.training_script_args == ["train", *RUN]

    # what accelerate hands each process it starts (as `accelerate launch` itself prepares it),
    # plus torchrun's rank variables, for the first process on node 1
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(
            list(defaults.deepspeed_config) + (["mixed_precision"] if precision_from_config else []))
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    env.update(RANK="8", WORLD_SIZE="16", LOCAL_RANK="0", LOCAL_WORLD_SIZE="8", MASTER_ADDR="node-a",
               MASTER_PORT="29500")
    cfg, group = group_config(load_config(REPO / RUN[0], RUN[1:]), env)
    assert (group.by, group.rank, group.world_size, group.local_world_size) == ("accelerate launch", 8, 16, 8)
    assert (cfg.workers, cfg.train.precision) == (16, precision)
    assert (cfg.strategy.kind, cfg.strategy.zero_stage if strategy[1] else None) == strategy
