"""DeepSpeed: one engine for G and one for D, each with its own config and loss scaler.

- ZeRO stage 0, 1 or 2 (`strategy.zero_stage`; 3 with R1 is refused by the config schema).
- Engines keep fp32 weights; bf16 comes from the trainer's autocast, as for every strategy.
  DeepSpeed's own bf16/fp16 modes cast the module to half precision, which G_ema (fp32) and
  the checkpoints cannot follow, so the config schema refuses train.precision fp16 here. Each
  engine has its own loss scale state (never one shared by G and D); in fp32 it stays at 1.
- Weights are made contiguous before `initialize`: DeepSpeed broadcasts parameters viewed as
  bytes, which channels_last conv weights cannot be (activations stay channels_last).
- Networks are always called through `engine.module`: a call through the engine itself arms
  DeepSpeed's backward bookkeeping, which breaks when D only runs inside G's step ("Direct calls
  to tensor.backward() are not supported" at stage 0) and under R1's double backward (IndexError
  in reduce_ipg_grads at stages 1/2). At stages 1/2 `engine.backward` reduces the gradients
  through the hooks ZeRO put on the parameters.
- Parameters a loss does not reach get no gradient in one process and Adam skips them;
  DeepSpeed's stage-0 all-reduce would fill in zeros, so stage 0 reduces with the DDP
  strategy's flat all-reduce instead (exactly one process's update). ZeRO 1/2 keep gradients
  in flat partitions where unreached means zero; R1 adds `0 * D(x)` (models/losses.py) so that
  it reaches every D parameter and all strategies step the same set.
- The trainer freezes the network a phase does not update, so D takes no gradient from G's
  step and ZeRO's hooks on D stay silent there.
- A step whose gradient is non-finite is skipped: ZeRO 1/2 check for overflow themselves;
  stage 0 (the bare client optimizer) takes the same check as the single strategy.
- `set_optim` writes the torch optimizer's param groups, which ZeRO's wrapper steps with.

The comm op DeepSpeed JIT-builds at first init (18-120 s here) is cached in TORCH_EXTENSIONS_DIR
(default ~/.cache/gantry/torch_extensions), so only the first run on a machine pays it.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.errors import GantryError
from pipeline.strategy.base import Strategy
from pipeline.strategy.ddp import (ProcessGroupCollectives, average_gradients, broadcast_module, init_process_group,
                                   local_device)
from pipeline.strategy.single import step_if_finite


def engine_config(micro_batch: int, world_size: int, zero_stage: int) -> dict:
    """The DeepSpeed config of one network's engine."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "train_batch_size": micro_batch * world_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": zero_stage},
        # The trainer builds Adam itself (same optimizer for every strategy).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class DeepSpeedStrategy(ProcessGroupCollectives, Strategy):
    def __init__(self, zero_stage: int, micro_batch: int):
        """`micro_batch`: this rank's share of the global batch (see make_strategy)."""
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/gantry/torch_extensions"))
        init_process_group()
        self.device = local_device()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.zero_stage, self.micro_batch = zero_stage, micro_batch
        self.engines = {}

    def setup(self, nets, optimizers, precision) -> None:
        import deepspeed

        for name, net in nets.items():
            net.to(memory_format=torch.contiguous_format)
            broadcast_module(net)  # the trainer seeds identically; this makes it a guarantee
            cfg = engine_config(self.micro_batch, self.world_size, self.zero_stage)
            engine, *_ = deepspeed.initialize(model=net, optimizer=optimizers[name], config=cfg,
                                              dist_init_required=False)
            self.engines[name] = engine

    def module(self, name):
        return self.engines[name].module

    def backward(self, name, loss):
        engine = self.engines[name]
        if self.zero_stage == 0:
            loss.backward()
            average_gradients(engine.module, self.world_size)
        else:
            engine.backward(loss)

    def step(self, name):
        engine = self.engines[name]
        if not hasattr(engine.optimizer, "overflow"):  # stage 0, fp32: the bare client optimizer
            norm = step_if_finite(engine.module, self.device, engine.step)
            engine.zero_grad()  # a skipped step leaves the gradient; engine.step zeroes its own
            return norm
        engine.step()
        norm = engine.get_global_grad_norm()
        return torch.tensor(float("nan") if norm is None else float(norm), device=self.device)

    def set_optim(self, name, **group):
        for g in _torch_optimizer(self.engines[name].optimizer).param_groups:
            g.update(group)

    def state_dict(self):
        """Collective. Every rank's optimizer state (its ZeRO partition at stages 1/2) and loss
        scale, as plain tensors and numbers: checkpoints are read with weights_only=True, and
        DeepSpeed's own optimizer state_dict holds pickled objects."""
        mine = {n: _optimizer_state(e.optimizer) for n, e in self.engines.items()}
        return {"ranks": self.all_gather_object(mine)}

    def load_state_dict(self, state):
        """After the trainer loaded the weights into `module(name)`."""
        ranks = state["ranks"]
        if len(ranks) != self.world_size:
            raise GantryError(f"checkpoint holds DeepSpeed state of {len(ranks)} ranks; "
                              f"resume it with {len(ranks)} workers")
        for n, e in self.engines.items():
            _load_optimizer_state(e.optimizer, ranks[self.rank][n])

    def _release(self):
        # Engines hold comm state that must go before the group does (no collective in destroy).
        for engine in self.engines.values():
            engine.destroy()
        self.engines = {}


def _torch_optimizer(opt) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's: ZeRO and fp16/bf16 wrappers hold it as .optimizer."""
    return getattr(opt, "optimizer", opt)


def _optimizer_state(opt) -> dict:
    base = _torch_optimizer(opt)
    scaler = getattr(opt, "loss_scaler", None)
    plain = {k: v for k, v in vars(scaler).items() if isinstance(v, (bool, int, float))} if scaler else {}
    return {"base": base.state_dict(), "scaler": plain}


def _load_optimizer_state(opt, state: dict) -> None:
    _torch_optimizer(opt).load_state_dict(state["base"])
    for k, v in state["scaler"].items():
        setattr(opt.loss_scaler, k, v)
    if hasattr(opt, "refresh_fp32_params"):  # master copies must follow the loaded weights
        opt.refresh_fp32_params()
