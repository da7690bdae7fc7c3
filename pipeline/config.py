"""The run config: a typed schema loaded from YAML plus dotted `key=value` overrides.

Every mistake (unknown key, wrong type, impossible value) becomes one `ConfigError` whose
message names the key and the file, so the CLI can print one line and exit 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline import storage
from pipeline.errors import GantryError


class ConfigError(ValueError):
    """A config that cannot run. The message is one line naming the key and the file."""


def _check_location(url: str, write: bool) -> None:
    try:
        storage.check(url, write=write)
    except GantryError as e:
        raise ValueError(str(e).removeprefix(f"{url}: ")) from None


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    arch: Literal["mlp", "dcgan", "resnet", "stylegan2", "pix2pix"] = "mlp"
    z_dim: int = Field(64, gt=0)
    resolution: int = Field(32, gt=0, description="image side; ignored for 2-D data")
    g_width: int = Field(64, gt=0, description="base channel width (hidden units for mlp)")
    d_width: int = Field(64, gt=0)
    depth: int = Field(3, gt=0, description="hidden layers of the mlp pair")
    w_dim: int = Field(256, gt=0, description="stylegan2 intermediate latent size")
    mapping_layers: int = Field(4, gt=0, description="stylegan2 mapping network depth")
    d_spectral_norm: bool = Field(True, description="resnet: spectral norm on D's layers (SNGAN); off, R1/R2 "
                                                     "alone keep D smooth")
    conditional: bool = Field(False, description="G draws a chosen class, D is a projection discriminator")
    classes: int = Field(0, ge=0, description="class count of a conditional run; set from the data at start-up")
    dropout: float = Field(0.5, ge=0, lt=1, description="pix2pix: dropout of the U-Net's innermost decoder blocks")
    input_channels: int = Field(0, ge=0, description="pix2pix: channels of the input image A; set from the data "
                                                     "at start-up")

    @model_validator(mode="after")
    def _power_of_two(self):
        if self.arch != "mlp" and (self.resolution & (self.resolution - 1)) != 0:
            raise ValueError(f"model.resolution must be a power of two, got {self.resolution}")
        if self.arch == "pix2pix" and self.resolution < 8:
            raise ValueError(f"model.resolution must be 8 or more for pix2pix, got {self.resolution}")
        return self


class LossConfig(Section):
    kind: Literal["logistic", "hinge", "wgan-gp", "rpgan"] = "logistic"
    r1_gamma: float = Field(0.0, ge=0, description="R1 weight on real images; 0 turns it off")
    r2_gamma: float = Field(0.0, ge=0, description="R2 weight on generated images (R1's mirror); 0 turns it off")
    r1_interval: int = Field(16, gt=0, description="lazy R1 and R2: every N D steps, scaled by N; 1 is plain "
                                                  "(in D's main step where the run is fp32)")
    gamma_end: float = Field(1.0, ge=0, description="R1 and R2 weights at the end of train.ramp_kimg, as a share "
                                                    "of r1_gamma and r2_gamma (cosine ramp); 1 keeps them constant")
    g_topk: float = Field(1.0, gt=0, le=1, description="top-k training: the share of each batch's fakes G learns "
                                                    "from at the end of train.ramp_kimg, those D rates best "
                                                    "(cosine ramp from 1); 1 keeps every fake")
    gp_weight: float = Field(10.0, ge=0, description="gradient penalty weight for wgan-gp")
    l1_weight: float = Field(100.0, ge=0, description="pix2pix: weight of the L1 distance of G(A) to B")
    adv_weight: float = Field(1.0, ge=0, description="pix2pix: weight of G's adversarial term; 0 trains "
                                                     "L1 alone (no D steps), the baseline")


class OptimConfig(Section):
    lr: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    lr_end: Optional[float] = Field(None, gt=0, description="lr at the end of train.ramp_kimg (cosine ramp from lr); "
                                                           "null keeps it constant")
    beta2_end: Optional[float] = Field(None, ge=0, lt=1, description="beta2 at the end of train.ramp_kimg "
                                                                      "(cosine ramp from beta2); null keeps it constant")


class TrainConfig(Section):
    kimg: float = Field(100.0, gt=0, description="length of the run in thousands of real images")
    batch: int = Field(64, gt=0, description="global batch over all workers")
    n_critic: int = Field(1, gt=0, description="D steps per G step")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    ema_kimg: float = Field(10.0, ge=0, description="EMA half-life of G_ema in kimg; 0 copies G")
    ema_rampup: Optional[float] = Field(0.05, ge=0, description="half-life <= kimg * rampup")
    ema_bn_latents: int = Field(0, ge=0, description="G_ema's batch-norm statistics re-estimated from this many "
                                                     "latents before each evaluation and checkpoint; 0: G's, copied")
    log_every: int = Field(50, gt=0, description="steps between metric logs")
    ramp_kimg: float = Field(0.0, ge=0, description="length of the cosine ramps (loss.gamma_end, *_optim.lr_end "
                                                    "and beta2_end); 0: the whole run")
    eval_kimg: float = Field(10.0, gt=0)
    checkpoint_kimg: float = Field(25.0, gt=0)
    keep_checkpoints: int = Field(3, gt=0)
    out_dir: str = "runs"

    @field_validator("out_dir")
    @classmethod
    def _writable_scheme(cls, v):
        _check_location(v, write=True)
        return v

    @field_validator("channels_last", mode="before")
    @classmethod
    def _yaml_on_off(cls, v):
        # YAML 1.1 reads a bare on/off as a boolean.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class DataConfig(Section):
    source: Literal["toy-ring", "toy-grid", "shards"] = "toy-ring"
    modes: int = Field(8, gt=0, description="ring: k modes; grid: k*k modes (give k*k)")
    std: float = Field(0.02, gt=0, description="std of each toy mode")
    radius: float = Field(2.0, gt=0, description="ring radius / half the grid side")
    path: Optional[str] = Field(None, description="shard directory with manifest.json")
    on_error: Literal["skip", "fail"] = "skip"
    loader_workers: int = Field(1, ge=0)
    shuffle_buffer: int = Field(1000, ge=0)
    resampled: bool = Field(False, description="multi-node: resample shards, fixed epoch length")
    batches_per_epoch: Optional[int] = Field(None, gt=0)

    @field_validator("path")
    @classmethod
    def _known_scheme(cls, v):
        if v is not None:
            _check_location(v, write=False)
        return v

    @model_validator(mode="after")
    def _shards_need_path(self):
        if self.source == "shards" and not self.path:
            raise ValueError("data.path is required when data.source is 'shards'")
        if self.source == "toy-grid" and round(self.modes ** 0.5) ** 2 != self.modes:
            raise ValueError(f"data.modes must be a square for toy-grid, got {self.modes}")
        return self


class AugmentConfig(Section):
    kind: Literal["none", "diffaugment", "ada"] = "none"
    policy: str = Field("color,translation,cutout", description="DiffAugment ops")
    ada_target: float = Field(0.6, gt=0, lt=1)
    ada_interval: int = Field(4, gt=0)
    ada_kimg: float = Field(100.0, gt=0, description="kimg for p to move by 1")

    @field_validator("policy")
    @classmethod
    def _known_ops(cls, v: str) -> str:
        from models.augment import parse_policy
        parse_policy(v)  # its ValueError names the unknown op
        return v


class EvalConfig(Section):
    metrics: list[Literal["fid", "kid", "pr", "coverage", "cas", "aug_gain"]] = Field(
        ["fid", "coverage"], description="image metrics at each eval (shards only); [] for grids only; "
                                         "cas and aug_gain for conditional models")
    features: Literal["inception", "classifier"] = Field(
        "classifier", description="feature space of fid/kid/pr; inception is ~0.4 s/image on a CPU")
    n_fake: int = Field(5000, gt=0, description="generated images per evaluation")
    n_real: Optional[int] = Field(10000, gt=0, description="real images for the cached statistics; null: all")
    kid_subsets: int = Field(100, gt=0)
    kid_subset_size: int = Field(1000, gt=1)
    pr_k: int = Field(3, gt=0, description="k of the k-NN manifolds of precision/recall")
    classifier_steps: int = Field(1500, gt=0, description="training steps of the domain classifier")
    cache_dir: Optional[str] = Field(None, description="real statistics + classifier; default <out_dir>/.cache")


class HealthConfig(Section):
    enabled: bool = True
    policy: Literal["warn", "stop", "rollback"] = "warn"
    window: int = Field(20, ge=4, description="log reports the D-collapse and max_loss rules look back over")
    d_floor: float = Field(0.05, ge=0, description="D loss below this counts as ~0; 0 turns the rule off")
    g_rise: float = Field(1.0, gt=0, description="G loss rise over the window that, with D ~ 0, is divergence")
    max_loss: float = Field(50.0, ge=0, description="mean D or G loss above this is divergence; 0 turns it off")
    max_skipped: float = Field(0.5, gt=0, le=1, description="share of skipped (non-finite) steps that is divergence")
    collapse_ratio: float = Field(0.3, gt=0, lt=1, description="diversity below ratio x baseline: mode collapse")
    # Off by default: a good ratio depends on the data and on how soon G learns (an untrained
    # DCGAN reads 0.2 against real MNIST's 19.8); configs/mnist-dcgan.yaml sets one it measured.
    real_ratio: float = Field(0.0, ge=0, lt=1, description="diversity below ratio x the real data's: mode collapse "
                                                           "from the first readings; 0 turns it off")
    real_patience: int = Field(2, ge=1, description="readings in a row below real_ratio before it flags")
    class_ratio: float = Field(0.0, ge=0, le=1, description="classes G's images fill (eval metric coverage) below "
                                                            "ratio x the data's: mode collapse; 0 turns it off")
    warmup: int = Field(3, ge=1, description="diversity readings that seed the baseline")
    baseline_beta: float = Field(0.9, ge=0, lt=1, description="EMA factor of the diversity baseline")
    diversity_samples: int = Field(64, ge=2, description="fixed latents whose images are compared")
    lr_scale: float = Field(0.5, gt=0, le=1, description="rollback: multiply both learning rates by this")
    max_rollbacks: int = Field(3, ge=0, description="rollbacks before the run stops instead")


class TrackingConfig(Section):
    enabled: bool = True
    uri: Optional[str] = Field(None, description="MLflow URI; default MLFLOW_TRACKING_URI or ./mlruns.db")
    experiment: str = "gantry"
    run_name: Optional[str] = None
    backlog: int = Field(10000, gt=0, description="records held while the server is down")


class StrategyConfig(Section):
    kind: Literal["single", "ddp", "deepspeed"] = "single"
    zero_stage: int = Field(0, ge=0, le=3)

    def for_group(self, world_size: int) -> str:
        """The kind a group of `world_size` processes runs: `single` is one process, so several
        run `ddp` (each alone would train the whole run, into one run dir)."""
        return "ddp" if world_size > 1 and self.kind == "single" else self.kind


class RetrainConfig(Section):
    """`gantry retrain`: warm-start a challenger from the registry's champion, keep the better."""
    kimg: float = Field(50.0, gt=0, description="kimg the challenger trains beyond the champion")
    min_improvement: float = Field(0.0, ge=0, description="quality_score margin a challenger must beat the champion by")
    model_name: Optional[str] = Field(None, description="registered model; default: the run name")
    lock_path: Optional[str] = Field(None, description="lock file; default <train.out_dir>/<name>.retrain.lock")


class RunConfig(Section):
    name: str = "run"
    seed: int = 0
    workers: int = Field(1, gt=0)
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    g_optim: OptimConfig = OptimConfig()
    d_optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    eval: EvalConfig = EvalConfig()
    health: HealthConfig = HealthConfig()
    tracking: TrackingConfig = TrackingConfig()
    strategy: StrategyConfig = StrategyConfig()
    retrain: RetrainConfig = RetrainConfig()

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.train.batch % self.workers:
            raise ValueError(f"train.batch ({self.train.batch}) is not divisible by workers ({self.workers})")
        if self.strategy.kind == "deepspeed" and self.strategy.zero_stage == 3 and (
                self.loss.r1_gamma > 0 or self.loss.r2_gamma > 0):
            raise ValueError("strategy.zero_stage 3 cannot run R1 or R2 (loss.r1_gamma, r2_gamma > 0); use stage 0-2")
        if self.strategy.kind == "deepspeed" and self.train.precision == "fp16":
            raise ValueError("strategy.kind 'deepspeed' cannot run train.precision 'fp16' (its fp16 "
                             "engine holds fp16 weights); use bf16, fp32 or auto")
        if self.model.arch == "mlp" and self.data.source == "shards":
            raise ValueError("model.arch 'mlp' is for 2-D toy data; pick an image arch for shards")
        if self.model.arch == "mlp" and self.augment.kind != "none":
            raise ValueError(f"augment.kind '{self.augment.kind}' augments images; model.arch 'mlp' makes 2-D points")
        if self.model.arch != "mlp" and self.data.source != "shards":
            raise ValueError(f"model.arch '{self.model.arch}' needs image data (data.source: shards)")
        if self.model.arch == "pix2pix":
            if self.train.ema_bn_latents:
                raise ValueError("train.ema_bn_latents re-estimates statistics from latents; model.arch 'pix2pix' "
                                 "draws from input images, so set it to 0")
            if self.model.conditional:
                raise ValueError("model.arch 'pix2pix' is conditioned on its input image; model.conditional "
                                 "(class labels) does not apply")
            if self.augment.kind != "none":
                raise ValueError(f"augment.kind '{self.augment.kind}' would move B apart from its A; "
                                 f"model.arch 'pix2pix' trains without augmentation")
            other = [name for name in self.eval.metrics if name not in ("fid", "coverage")]
            if other:
                raise ValueError(f"eval.metrics {', '.join(other)} do not apply to model.arch 'pix2pix', which "
                                 f"reports l1, psnr, ssim and takes fid and coverage (class match)")
            if self.loss.l1_weight == 0 and self.loss.adv_weight == 0:
                raise ValueError("loss.l1_weight and loss.adv_weight are both 0: pix2pix's G would learn nothing")
        labelled = [name for name in self.eval.metrics if name in ("cas", "aug_gain")]
        if labelled and not self.model.conditional:
            raise ValueError(f"eval.metrics {', '.join(labelled)} score a class-conditional model's labelled "
                             f"samples; set model.conditional: true")
        return self

    @property
    def is_toy(self) -> bool:
        return self.data.source != "shards"

    @property
    def is_translation(self) -> bool:
        """G maps an input image A to B (pix2pix) instead of drawing from noise."""
        return self.model.arch == "pix2pix"

    @property
    def conditioned(self) -> bool:
        """G and D take a condition from the data: a class label, or the input image A."""
        return self.model.conditional or self.is_translation

    def local_locations(self) -> list[tuple[str, str]]:
        """(key, location) of every place the run reads or writes that is on this machine's
        disk: what a node of a cluster without a shared disk cannot use (toy data is generated
        in memory, so it has no location)."""
        where = [("train.out_dir", self.train.out_dir), ("data.path", None if self.is_toy else self.data.path),
                 ("eval.cache_dir", self.eval.cache_dir)]
        return [(key, value) for key, value in where if value and storage.is_local(value)]

    @property
    def ramp_kimg(self) -> float:
        return self.train.ramp_kimg or self.train.kimg

    def rank_batch(self, world_size: int) -> int:
        """Each rank's share of the global batch, for the process group's actual size (which
        worker.make_strategy checks divides train.batch)."""
        return self.train.batch // world_size


def _parse_scalar(text: str) -> Any:
    """An override value is YAML, so `1e-4`, `true`, `[0.5, 0.9]` and `null` all work."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _apply_override(tree: dict, dotted: str, source: str) -> None:
    if "=" not in dotted:
        raise ConfigError(f"{source}: override '{dotted}' is not of the form key=value")
    key, value = dotted.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override key '{key}' goes through a non-section value")
    node[parts[-1]] = _parse_scalar(value)


def describe_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{source}: key '{key}': {msg} (got {first.get('input')!r})" if first["loc"] else f"{source}: {msg}"


def from_dict(tree: dict, source: str = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(describe_error(e, source)) from None


def read_mapping(path: str | Path, what: str = "config") -> dict:
    """A YAML file whose top level is a mapping; a ConfigError naming the file otherwise."""
    source, p = str(path), Path(path)
    if not p.is_file():
        raise ConfigError(f"{source}: {what} file not found")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    return tree


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML file (or defaults when path is None) and apply dotted overrides."""
    source = str(path) if path else "<defaults>"
    tree = read_mapping(path) if path else {}
    for o in overrides:
        _apply_override(tree, o, source)
    return from_dict(tree, source)


def with_overrides(cfg: RunConfig, overrides: list[str], source: str) -> RunConfig:
    """A stored config (a checkpoint's, a registered model's) with dotted overrides applied."""
    tree = cfg.model_dump(mode="json")
    for o in overrides:
        _apply_override(tree, o, source)
    return from_dict(tree, source)


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
