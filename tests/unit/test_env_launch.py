"""The env launcher's reading of a torchrun / accelerate launch environment: which launcher runs,
what a group of processes makes of the config, and every launch it refuses (the processes
themselves: tests/integration/test_env_launcher.py)."""
from __future__ import annotations

import pytest

from launch.env_launch import Group, _peer_lost, joined_config, read_group
from launch.launcher import choose_launcher
from pipeline.config import ConfigError, from_dict

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none"}
# what `accelerate launch` adds for a config file with a DeepSpeed plugin
ACCELERATE = {**TORCHRUN, "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DYNAMO_BACKEND": "NO",
              "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
              "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1"}


def cfg(**sections):
    return from_dict({"train": {"batch": 32}, **sections})


def test_auto_picks_env_inside_a_group_then_ray_then_local():
    assert choose_launcher("auto", cfg(), TORCHRUN) == "env"
    assert choose_launcher(None, cfg(workers=2), {}) == "ray"
    assert choose_launcher("auto", cfg(), {}) == "local"
    assert choose_launcher("local", cfg(), {**TORCHRUN, "WORLD_SIZE": "1"}) == "local"


@pytest.mark.parametrize("launcher,env,message", [
    ("env", {}, "WORLD_SIZE is not set"),
    ("ray", TORCHRUN, "one whole run per process"),
    ("local", TORCHRUN, "one whole run per process"),
])
def test_a_launcher_the_environment_contradicts_is_refused(launcher, env, message):
    with pytest.raises(ConfigError, match=message):
        choose_launcher(launcher, cfg(), env)


def test_torchrun_group():
    g = read_group(TORCHRUN)
    assert g == Group(rank=1, world_size=2, local_world_size=2, by="torchrun") and not g.accelerate
    assert read_group(ACCELERATE).accelerate


@pytest.mark.parametrize("drop,change,message", [
    (["MASTER_ADDR"], {}, "WORLD_SIZE=2 is set but MASTER_ADDR is not"),
    (["MASTER_ADDR", "MASTER_PORT"], {}, "MASTER_ADDR and MASTER_PORT are not"),
    (["RANK"], {}, "RANK=None"),
    ([], {"RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
    ([], {"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
])
def test_a_group_that_cannot_form_is_refused(drop, change, message):
    env = {k: v for k, v in {**TORCHRUN, **change}.items() if k not in drop}
    with pytest.raises(ConfigError, match=message):
        read_group(env)


def test_a_group_runs_ddp_at_its_own_size():
    c = joined_config(cfg(), read_group(TORCHRUN), TORCHRUN)
    assert (c.workers, c.strategy.kind, c.train.precision) == (2, "ddp", "auto")
    c = joined_config(cfg(strategy={"kind": "deepspeed", "zero_stage": 1}), read_group(TORCHRUN), TORCHRUN)
    assert (c.workers, c.strategy.kind, c.strategy.zero_stage) == (2, "deepspeed", 1)


def test_the_group_size_must_divide_the_batch_and_match_workers():
    three = {**TORCHRUN, "WORLD_SIZE": "3"}
    with pytest.raises(ConfigError, match=r"torchrun \(WORLD_SIZE=3\): .*train.batch \(32\) is not divisible by workers \(3\)"):
        joined_config(cfg(), read_group(three), three)
    with pytest.raises(ConfigError, match="asks for workers=4"):
        joined_config(cfg(workers=4), read_group(TORCHRUN), TORCHRUN)


def test_an_accelerate_config_sets_precision_and_deepspeed():
    c = joined_config(cfg(), read_group(ACCELERATE), ACCELERATE)
    assert (c.strategy.kind, c.strategy.zero_stage, c.train.precision) == ("deepspeed", 2, "fp32")
    bf16 = {**ACCELERATE, "ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_USE_DEEPSPEED": "false"}
    c = joined_config(cfg(), read_group(bf16), bf16)
    assert (c.strategy.kind, c.train.precision) == ("ddp", "bf16")
    # 'no' is also accelerate's default: the run's own choice stands
    c = joined_config(cfg(train={"batch": 32, "precision": "bf16"}), read_group(ACCELERATE), ACCELERATE)
    assert c.train.precision == "bf16"


@pytest.mark.parametrize("change,sections,message", [
    ({"ACCELERATE_MIXED_PRECISION": "fp16"}, {}, "'deepspeed' cannot run train.precision 'fp16'"),
    ({"ACCELERATE_MIXED_PRECISION": "fp16", "ACCELERATE_USE_DEEPSPEED": "false"},
     {"train": {"batch": 32, "precision": "bf16"}}, "mixed_precision is fp16 but train.precision is bf16"),
    ({"ACCELERATE_MIXED_PRECISION": "fp8"}, {}, "mixed_precision fp8"),
    ({}, {"strategy": {"kind": "ddp"}}, "ZeRO stage 2 but the run's strategy is ddp"),
    ({}, {"strategy": {"kind": "deepspeed", "zero_stage": 1}}, "strategy is deepspeed at stage 1"),
    ({"ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, {}, "a DeepSpeed JSON of its own"),
    ({"ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, {}, "offload_optimizer_device cpu"),
    ({"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, {}, "gradient_accumulation_steps 4"),
    ({"ACCELERATE_USE_FSDP": "true", "ACCELERATE_USE_DEEPSPEED": "false"}, {}, "FSDP"),
    ({"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"}, {}, "dynamo_backend INDUCTOR"),
])
def test_an_accelerate_config_gantry_cannot_honour_is_refused(change, sections, message):
    env = {**ACCELERATE, **change}
    with pytest.raises(ConfigError, match=message) as e:
        joined_config(cfg(**sections), read_group(env), env)
    assert str(e.value).startswith("accelerate launch (WORLD_SIZE=2): ") and "\n" not in str(e.value)


def test_a_lost_peer_is_found_in_the_exception_chain():
    gloo = RuntimeError("[/src/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:631: Connection reset by "
                        "peer. This is typically caused by a remote worker hanging. GLHF!")
    try:
        try:
            raise gloo
        except RuntimeError:
            raise KeyboardInterrupt  # torchrun's SIGTERM arriving while the rank unwinds
    except KeyboardInterrupt as e:
        assert _peer_lost(e) == "Read error [127.0.0.1]:631: Connection reset by peer"
    assert _peer_lost(RuntimeError("CUDA out of memory")) is None
