"""Scheduled retraining: champion/challenger on the MLflow model registry.

One `retrain(cfg)` does, under an exclusive lock (see `exclusive`):

1. Reads the data version: a shard set's manifest `version` (bumped by `gantry shards add`), or
   for toy mixtures their parameters (`toy-ring:modes=8,std=0.02,radius=2`), so changing the
   distribution is new data and nothing else is.
2. Finds the champion: the version of `retrain.model_name` holding the alias `champion`, and its
   run's tag `data_version`. Nothing to do when that equals the data version, or when a
   challenger of this champion was already trained on it and rejected (unless `force`).
3. No champion yet: trains from scratch for `train.kimg`, registers the run, makes it champion.
   Otherwise trains a challenger: the champion run's checkpoint `checkpoints/latest` (G, D,
   G_ema, optimizers) is resumed into a new MLflow run, a child of the champion's run
   (`mlflow.parentRunId`), for `retrain.kimg` more.
4. Scores challenger and champion G_ema with the config's own evaluator on the same latents
   (`pipeline.evaluation.quality_score`, higher is better: toy coverage/quality, -FID for
   images), registers the challenger and moves `champion` to it only when it wins by more than
   `retrain.min_improvement`. Both runs and both versions carry the decision as tags.

Each attempt trains into its own run directory `<train.out_dir>/<name>-<UTC time>/`.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from launch.launcher import launch
from launch.registry import CHAMPION, download_checkpoint, register_run
from pipeline import storage
from pipeline.checkpoint import latest_checkpoint, load_checkpoint, read_meta, save_checkpoint
from pipeline.config import RunConfig
from pipeline.errors import GantryError
from pipeline.worker import run_dir_for


class Locked(GantryError):
    """Another retrain of the same model holds the lock."""


@contextlib.contextmanager
def exclusive(path: str | Path):
    """Hold an fcntl lock on `path` (created if missing) for the block, or raise Locked at once.
    The kernel drops the lock when the process dies, so a crashed retrain never blocks the next.
    It excludes processes that share the file system's locks: one node, or a shared volume
    whose file system supports them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise Locked(f"another retrain holds {path} (pid {holder})") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # before the unlock: a reader never sees a dead holder's pid


def lock_path(cfg: RunConfig) -> Path:
    """retrain.lock_path, else beside the runs; for runs on an object store (no locks there),
    in this machine's temp folder."""
    if cfg.retrain.lock_path:
        return Path(cfg.retrain.lock_path)
    out = storage.local_path(cfg.train.out_dir) if storage.is_local(cfg.train.out_dir) else \
        os.path.join(tempfile.gettempdir(), "gantry")
    return Path(out) / f"{cfg.name}.retrain.lock"


def model_name(cfg: RunConfig) -> str:
    return cfg.retrain.model_name or cfg.name


def data_version(cfg: RunConfig) -> str:
    if cfg.is_toy:
        d = cfg.data
        return f"{d.source}:modes={d.modes},std={d.std:g},radius={d.radius:g}"
    from pipeline.shards.manifest import load_manifest
    return str(load_manifest(cfg.data.path).version)


@dataclass
class Champion:
    version: str
    run_id: str
    data_version: str | None


def find_champion(client, name: str) -> Champion | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model, or no version holds the alias
        return None
    return Champion(str(mv.version), mv.run_id, client.get_run(mv.run_id).data.tags.get("data_version"))


def already_challenged(client, name: str, champion: Champion, version: str) -> str | None:
    """The challenger version already trained against this champion on this data, if any."""
    for mv in client.search_model_versions(f"name='{name}'"):
        t = mv.tags
        if t.get("challenger_of") == champion.version and t.get("data_version") == version and "retrain_decision" in t:
            return str(mv.version)
    return None


def retrain(cfg: RunConfig, force: bool = False) -> str:
    """One retraining as described in the module docstring; returns the decision:
    'nothing to do', 'first champion', 'promoted' or 'rejected'."""
    from mlflow import MlflowClient

    from pipeline.tracking.store import resolve_uri

    if not cfg.tracking.enabled:
        raise GantryError("retrain keeps its champion in MLflow: set tracking.enabled: true")
    uri = resolve_uri(cfg.tracking.uri)
    client = MlflowClient(uri)
    name, version = model_name(cfg), data_version(cfg)
    champion = find_champion(client, name)
    if champion and not force:
        if champion.data_version == version:
            print(f"nothing to do: champion {name} v{champion.version} was trained on data {version}")
            return "nothing to do"
        if (seen := already_challenged(client, name, champion, version)) is not None:
            print(f"nothing to do: v{seen} already challenged champion v{champion.version} on data {version}")
            return "nothing to do"

    base = cfg.name
    cfg = cfg.model_copy(deep=True)
    cfg.name = f"{base}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    run_dir = run_dir_for(cfg)
    if champion is None:
        print(f"no champion for {name}: training from scratch on data {version} ({run_dir})", flush=True)
        run_id = train(cfg, run_dir)
        client.set_tag(run_id, "data_version", version)  # for toy data the worker tags only the source
        challenger = register_run(uri, run_id, name, alias=CHAMPION)
        score = evaluate(cfg, storage.join(run_dir, "checkpoints"))
        _tag_both(client, name, challenger, run_id,
                  {"retrain_decision": "promoted", "data_version": version, "challenger_score": f"{score:.6g}"})
        print(f"{name} v{challenger} (score {score:.4g}) is the first champion")
        return "first champion"

    print(f"data {version} is new to champion {name} v{champion.version} (data {champion.data_version}): "
          f"training a challenger for {cfg.retrain.kimg:g} kimg ({run_dir})", flush=True)
    warm = _warm_start(client, champion, storage.join(run_dir, "warm-start"))
    meta = read_meta(warm)
    if meta["config"]["model"] != cfg.model.model_dump(mode="json"):
        raise GantryError(f"the model section differs from champion v{champion.version}'s, so it cannot warm-start; "
                          f"register a new model name (retrain.model_name)")
    cfg.train.kimg = meta["kimg"] + cfg.retrain.kimg
    run_id = _challenger_run(client, uri, cfg, champion)
    train(cfg, run_dir, resume=warm, tracking_run_id=run_id)
    client.set_tag(run_id, "data_version", version)
    challenger = register_run(uri, run_id, name)
    new, old = evaluate(cfg, storage.join(run_dir, "checkpoints")), evaluate(cfg, warm)
    promoted = new - old > cfg.retrain.min_improvement
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, challenger)
    decision = "promoted" if promoted else "rejected"
    scores = {"challenger_score": f"{new:.6g}", "champion_score": f"{old:.6g}"}
    _tag_both(client, name, challenger, run_id,
              {"retrain_decision": decision, "challenger_of": champion.version, "data_version": version, **scores})
    _tag_both(client, name, champion.version, champion.run_id,
              {"challenged_by": challenger, "challenge_result": "dethroned" if promoted else "defended"})
    print(f"challenger v{challenger} scores {new:.4g}, champion v{champion.version} {old:.4g} "
          f"(needs > {cfg.retrain.min_improvement:g} more): {decision}")
    return decision


def train(cfg: RunConfig, run_dir: str, resume: str | None = None, tracking_run_id: str | None = None) -> str:
    """Train as `gantry train` would; returns the MLflow run id the run logged to."""
    launch(cfg, resume=resume, tracking_run_id=tracking_run_id)
    latest = latest_checkpoint(storage.join(run_dir, "checkpoints"))
    if latest is None:
        raise GantryError(f"training left no checkpoint under {storage.join(run_dir, 'checkpoints')}")
    return read_meta(latest)["tracking_run_id"]


def evaluate(cfg: RunConfig, ckpt: str) -> float:
    """quality_score of a checkpoint's G_ema under `cfg`'s evaluator (fixed latents and data)."""
    from pipeline.checkpoint import load_generator
    from pipeline.evaluation import quality_score
    from pipeline.tracking import Tracker
    from pipeline.worker import make_evaluator, make_stream

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    G, _ = load_generator(ckpt)
    stream = make_stream(cfg, rank=0, world_size=1)
    evaluator = make_evaluator(cfg, stream, run_dir_for(cfg), device)
    score = quality_score(evaluator(G.to(device), 0, Tracker()))
    if score is None:
        raise GantryError(f"the evaluator for data {cfg.data.source} gives no quality score "
                          f"(eval.metrics {cfg.eval.metrics}): nothing to compare champion and challenger by")
    return score


def _challenger_run(client, uri: str, cfg: RunConfig, champion: Champion) -> str:
    """A new MLflow run, a child of the champion's, for the challenger to train into (the
    worker logs its params and tags there)."""
    from pipeline.tracking.store import experiment_id

    exp = experiment_id(client, cfg.tracking.experiment, uri)
    run = client.create_run(exp, run_name=cfg.tracking.run_name or cfg.name, tags={
        "mlflow.parentRunId": champion.run_id, "challenger_of": champion.version})
    return run.info.run_id


def _warm_start(client, champion: Champion, dest: str) -> str:
    """The champion's logged checkpoint, copied from MLflow to `dest` (in the run dir, so
    every worker of a cluster can read it); returns its location."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = download_checkpoint(client, champion.run_id, "checkpoints/latest", tmp)
        except GantryError as e:
            raise GantryError(f"cannot warm-start from champion v{champion.version}: {e}") from None
        weights, state, meta = load_checkpoint(local)
    return save_checkpoint(dest, meta["step"], weights, state, meta)


def _tag_both(client, name: str, version: str, run_id: str, tags: dict[str, str]) -> None:
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
        client.set_tag(run_id, k, v)
