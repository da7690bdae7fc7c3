"""SWEEP.yaml: what `gantry sweep` searches, how it scores trials, and what it may spend.

    name: toy-ring-lr                 # the sweep's directory, MLflow parent run and Tune experiment
    seed: 0                           # of the draws from ranges and choices: equal seeds, equal trials
    metric: hq_pct                    # a value the run's evaluation reports (see evaluation.metric_names)
    mode: max                         # max or min (fid: min)
    space:                            # dotted config keys, each one of:
      g_optim.lr: {grid: [0.0003, 0.001]}    #   grid: every value (a grid's cells multiply)
      d_optim.lr: {loguniform: [1e-4, 1e-2]} #   uniform / loguniform: [low, high]; choice: [values]
    budget:
      kimg: 384                       # per trial (default: the config's train.kimg)
      trials: 1                       # samples: random draws, or repeats of the whole grid
      concurrent: 2                   # trials at once
      report_kimg: 96                 # evaluate, checkpoint and report this often (default: eval_kimg)
      cpus_per_trial: 1               # Ray's CPUs per trial, shared by its workers (the config's `workers`);
                                      #   torch threads per worker: its share, at least 1
      max_failures: 2                 # a trial whose process dies restarts from its last checkpoint
    scheduler:
      kind: grid                      # grid | random | asha | pbt
      grace_kimg: 96                  # asha: no trial stops before this
      reduction_factor: 3             # asha
      interval_kimg: 96               # pbt: exploit / explore this often (default report_kimg)
      burn_in_kimg: 0                 # pbt: no exploit before this (early scores are noise)
      quantile: 0.25                  # pbt: the bottom quantile copies the top one
      resample_probability: 0.25      # pbt: explore resamples instead of scaling by 0.8 / 1.2
      synch: false                    # pbt: true waits for every trial at each interval, so which
                                      #   trial exploits which does not depend on timing

Every mistake is a ConfigError naming the file and the key, found before Ray starts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.config import ConfigError, RunConfig, describe_error, read_mapping, with_overrides
from pipeline.evaluation import metric_names


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Dimension(_Section):
    grid: Optional[list[Any]] = None
    choice: Optional[list[Any]] = None
    uniform: Optional[list[float]] = None
    loguniform: Optional[list[float]] = None

    @model_validator(mode="after")
    def _one_kind(self):
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of grid, choice, uniform, loguniform")
        kind, values = given[0], getattr(self, given[0])
        if not values:
            raise ValueError(f"{kind} is empty")
        if kind in ("uniform", "loguniform"):
            if len(values) != 2 or not values[0] < values[1]:
                raise ValueError(f"{kind} needs [low, high] with low < high, got {values}")
            if kind == "loguniform" and values[0] <= 0:
                raise ValueError(f"loguniform needs low > 0, got {values}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None)

    @property
    def values(self) -> list:
        return getattr(self, self.kind)

    def tune(self):
        """The Ray Tune search space of this dimension."""
        from ray import tune
        if self.kind in ("grid", "choice"):
            return (tune.grid_search if self.kind == "grid" else tune.choice)(self.values)
        return (tune.uniform if self.kind == "uniform" else tune.loguniform)(*self.values)


class Budget(_Section):
    kimg: Optional[float] = Field(None, gt=0)
    trials: int = Field(1, ge=1)
    concurrent: int = Field(1, ge=1)
    report_kimg: Optional[float] = Field(None, gt=0)
    cpus_per_trial: float = Field(1.0, gt=0)
    max_failures: int = Field(2, ge=0)


class Scheduler(_Section):
    kind: Literal["grid", "random", "asha", "pbt"] = "grid"
    grace_kimg: Optional[float] = Field(None, gt=0)
    reduction_factor: float = Field(3.0, gt=1)
    interval_kimg: Optional[float] = Field(None, gt=0)
    burn_in_kimg: float = Field(0.0, ge=0)
    quantile: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)
    synch: bool = False


class SweepSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    metric: str
    mode: Literal["min", "max"]
    space: dict[str, Dimension]
    budget: Budget = Budget()
    scheduler: Scheduler = Scheduler()

    @model_validator(mode="after")
    def _a_space(self):
        if not self.space:
            raise ValueError("space is empty: name at least one config key to search")
        if self.scheduler.kind == "pbt" and any(d.kind == "grid" for d in self.space.values()):
            raise ValueError("pbt explores by perturbing values; use choice, uniform or loguniform, not grid")
        return self


def load_sweep(path: str | Path, cfg: RunConfig) -> tuple[SweepSpec, RunConfig]:
    """The sweep file and the base config every trial starts from (`budget.kimg` and
    `report_kimg` applied); a ConfigError naming the file and key for anything that cannot run."""
    source = str(path)
    try:
        spec = SweepSpec.model_validate(read_mapping(path, "sweep"))
    except ValidationError as e:
        raise ConfigError(describe_error(e, source)) from None
    base = with_overrides(cfg, budget_overrides(spec, cfg), source)
    for key, dim in spec.space.items():
        for value in dim.values:  # a range's ends
            try:
                with_overrides(base, [assignment(key, value)], source)
            except ConfigError as e:
                raise ConfigError(f"{source}: space key '{key}': {str(e).removeprefix(source + ': ')}") from None
    reported = metric_names(base)
    if spec.metric not in reported:
        scored = "" if base.is_toy else f", eval.metrics {base.eval.metrics}"
        raise ConfigError(f"{source}: metric '{spec.metric}' is not reported by runs of this config "
                          f"(model.arch {base.model.arch} on {base.data.path or base.data.source}{scored}); it "
                          f"reports: {', '.join(sorted(reported)) or 'nothing'}")
    return spec, base


def budget_overrides(spec: SweepSpec, cfg: RunConfig) -> list[str]:
    """Every trial: the sweep's length, evaluated and saved at each report, tracked (the sweep's
    MLflow parent run gathers the trials)."""
    kimg = spec.budget.kimg or cfg.train.kimg
    report = min(spec.budget.report_kimg or cfg.train.eval_kimg, kimg)
    return [f"train.kimg={kimg}", f"train.eval_kimg={report}", f"train.checkpoint_kimg={report}",
            "tracking.enabled=true"]


def assignment(key: str, value) -> str:
    """`key=value` as an override: JSON is YAML, so strings, numbers and lists parse back."""
    return f"{key}={json.dumps(value)}"
