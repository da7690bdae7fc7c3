"""Checkpoints: one directory per save under any storage location, loaded without unpickling.

Layout of `ckpt-<step>/`:
  G.safetensors, D.safetensors, G_ema.safetensors   weights
  state.pt     optimizer/scaler states, RNG states, data position (tensors and plain
               containers only, read with torch.load(weights_only=True))
  meta.json    step, kimg, resolved config, tracking run id: what tools read without torch

meta.json is the commit marker. Object stores have no rename, so a save writes every other
file first (each one whole, see pipeline/storage.py) and meta.json last; a checkpoint exists
only once its meta.json does. A writer killed mid-save leaves a directory without one, which
nothing lists or resumes from, and the previous checkpoint stays the newest. Pruning and
replacing remove meta.json first, for the same reason.

Locations are strings (a path or a URL); functions that return a checkpoint return its
location.
"""
from __future__ import annotations

import io
import json
import random

import numpy as np
import torch
from safetensors.torch import load as load_safetensors, save as save_safetensors

from pipeline import storage
from pipeline.errors import GantryError

PREFIX = "ckpt-"
META = "meta.json"
NETWORKS = ("G", "D", "G_ema")


def save_checkpoint(root: str, step: int, weights: dict[str, dict[str, torch.Tensor]],
                    state: dict, meta: dict, keep: int | None = None) -> str:
    """Write `ckpt-<step>` under root (meta.json last) and prune to the newest `keep`."""
    path = storage.join(str(root), f"{PREFIX}{step:09d}")
    storage.remove(storage.join(path, META))  # a resumed run saving this step again: uncommit it first
    for name, sd in weights.items():
        blob = save_safetensors({k: v.detach().contiguous().cpu() for k, v in sd.items()})
        storage.write_bytes(storage.join(path, f"{name}.safetensors"), blob)
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_bytes(storage.join(path, "state.pt"), buf.getvalue())
    storage.write_bytes(storage.join(path, META), json.dumps(meta, indent=1).encode())
    committed = list_checkpoints(root)
    for old in committed[:-keep] if keep else []:
        storage.remove(storage.join(old, META))
        storage.remove(old)
    for name in storage.list_names(root):  # earlier saves killed before their commit
        if name.startswith(PREFIX) and name < storage.basename(path) and storage.join(str(root), name) not in committed:
            storage.remove(storage.join(str(root), name))
    return path


def adopt_checkpoint(src: str, root: str) -> str:
    """Make the checkpoint at `src` (another run's, or a copy of one) the only one under root,
    as if this run had saved it: a run continued from it rolls back to it, never to a
    checkpoint of its own past. Committed the same way (meta.json last); returns its location."""
    step = int(read_meta(src)["step"])
    for old in list_checkpoints(root):
        storage.remove(storage.join(old, META))
        storage.remove(old)
    dest = storage.join(str(root), f"{PREFIX}{step:09d}")
    for name in [n for n in storage.list_names(src) if n != META] + [META]:
        storage.write_bytes(storage.join(dest, name), storage.read_bytes(storage.join(str(src), name)))
    return dest


def list_checkpoints(root: str) -> list[str]:
    """Committed checkpoints under root, oldest first."""
    root = str(root)
    names = [n for n in storage.list_names(root) if n.startswith(PREFIX)]
    return [storage.join(root, n) for n in names if storage.exists(storage.join(root, n, META))]


def latest_checkpoint(root: str) -> str | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_meta(path: str) -> dict:
    url = storage.join(str(path), META)
    if not storage.exists(url):
        raise GantryError(f"{path}: not a gantry checkpoint (no {META})")
    try:
        return json.loads(storage.read_bytes(url))
    except json.JSONDecodeError as e:
        raise GantryError(f"{url}: corrupt ({e})") from None


def load_checkpoint(path: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict, dict]:
    """-> (weights by network name, state, meta). Never unpickles code."""
    path = str(path)
    meta = read_meta(path)
    try:
        weights = {n: load_safetensors(storage.read_bytes(storage.join(path, f"{n}.safetensors"))) for n in NETWORKS}
        state = torch.load(io.BytesIO(storage.read_bytes(storage.join(path, "state.pt"))),
                           weights_only=True, map_location="cpu")
    except GantryError:
        raise
    except Exception as e:  # safetensors and torch raise several types for a damaged file
        raise GantryError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    return weights, state, meta


def resolve_checkpoint(spec: str, root: str) -> str:
    """`latest` -> newest checkpoint under root; a run's checkpoints folder -> its newest;
    anything else is a checkpoint location."""
    spec = str(spec)
    if spec == "latest":
        found = latest_checkpoint(root)
        if found is None:
            raise GantryError(f"--resume latest: no checkpoint under {root}")
        return found
    if not storage.basename(spec).startswith(PREFIX):
        found = latest_checkpoint(spec)
        if found is not None:
            return found
    if not storage.exists(storage.join(spec, META)):
        raise GantryError(f"checkpoint not found: {spec}")
    return spec


def load_into(net: torch.nn.Module, weights: dict[str, torch.Tensor], path: str, name: str) -> None:
    """net.load_state_dict(weights), where weights that another architecture (or another version
    of this one) wrote are one line naming what does not fit."""
    try:
        net.load_state_dict(weights)
    except RuntimeError:
        own = net.state_dict()
        missing, unexpected = sorted(own.keys() - weights.keys()), sorted(weights.keys() - own.keys())
        reshaped = sorted(k for k in own.keys() & weights.keys() if own[k].shape != weights[k].shape)
        wrong = [f"{len(keys)} {what} (first {keys[0]})" for keys, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")) if keys]
        if not wrong:
            raise
        raise GantryError(f"{path}: its {name} weights do not fit the network its config builds: "
                          f"{', '.join(wrong)}; were they written by another version of gantry's models?") from None


def load_generator(path: str):
    """-> (G_ema in eval mode, resolved RunConfig) from a checkpoint or a checkpoints folder."""
    from pipeline.config import from_dict
    from pipeline.worker import build_networks

    path = resolve_checkpoint(str(path), str(path))
    meta = read_meta(path)
    cfg = from_dict(meta["config"], f"{path}/{META}")
    G, _ = build_networks(cfg, meta.get("channels", 2))
    load_into(G, load_safetensors(storage.read_bytes(storage.join(path, "G_ema.safetensors"))), path, "G_ema")
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
