"""Checkpoints: one directory per save, written atomically, loaded without unpickling code.

Layout of `ckpt-<step>/`:
  G.safetensors, D.safetensors, G_ema.safetensors   weights
  state.pt     optimizer/scaler states, RNG states, data position (tensors and plain
               containers only, read with torch.load(weights_only=True))
  meta.json    step, kimg, resolved config, tracking run id: what tools read without torch

A save goes to a temporary directory; every file and the directory are fsynced, then it is
renamed into place. A process killed mid-write leaves only a `.tmp-*` directory behind, and
the previous checkpoint stays the newest valid one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import GantryError

PREFIX = "ckpt-"
TMP_PREFIX = ".tmp-"
NETWORKS = ("G", "D", "G_ema")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(root: str | Path, step: int, weights: dict[str, dict[str, torch.Tensor]],
                    state: dict, meta: dict, keep: int | None = None) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:09d}"
    tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, sd in weights.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp / f"{name}.safetensors"))
    torch.save(state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    if final.exists():  # a resumed run saving the same step again: replace it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(root)
    if keep:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _is_complete(path: Path) -> bool:
    return all((path / f"{n}.safetensors").is_file() for n in NETWORKS) and \
        (path / "state.pt").is_file() and (path / "meta.json").is_file()


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and p.is_dir() and _is_complete(p))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise GantryError(f"{path}: not a gantry checkpoint (no meta.json)") from None
    except json.JSONDecodeError as e:
        raise GantryError(f"{path}/meta.json: corrupt ({e})") from None


def load_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict, dict]:
    """-> (weights by network name, state, meta). Never unpickles code."""
    path = Path(path)
    if not path.is_dir() or not _is_complete(path):
        raise GantryError(f"{path}: not a complete gantry checkpoint")
    meta = read_meta(path)
    try:
        weights = {n: load_file(str(path / f"{n}.safetensors")) for n in NETWORKS}
        state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    except Exception as e:  # safetensors and torch raise several types for a damaged file
        raise GantryError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    return weights, state, meta


def resolve_checkpoint(spec: str, root: str | Path) -> Path:
    """`latest` -> newest valid checkpoint under root; anything else is a path."""
    if spec == "latest":
        found = latest_checkpoint(root)
        if found is None:
            raise GantryError(f"--resume latest: no checkpoint under {root}")
        return found
    path = Path(spec)
    if path.is_dir() and not path.name.startswith(PREFIX):  # a run's checkpoint folder
        found = latest_checkpoint(path)
        if found is not None:
            return found
    if not path.exists():
        raise GantryError(f"checkpoint not found: {spec}")
    return path


def load_generator(path: str | Path):
    """-> (G_ema in eval mode, resolved RunConfig) from a checkpoint directory."""
    from pipeline.worker import build_networks
    from pipeline.config import from_dict

    path = resolve_checkpoint(str(path), Path(path))
    meta = read_meta(path)
    cfg = from_dict(meta["config"], f"{path}/meta.json")
    G, _ = build_networks(cfg, meta.get("channels", 2))
    G.load_state_dict(load_file(str(path / "G_ema.safetensors")))
    return G.eval(), cfg


def capture_rng() -> dict:
    """This process's RNG states (torch, CUDA, Python, NumPy) as tensors and plain lists, so
    `state.pt` stays loadable with weights_only=True."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
        "numpy": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
    }


def restore_rng(rng: dict) -> None:
    """The inverse of `capture_rng`."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate((3, tuple(rng["python"]), None))
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))
