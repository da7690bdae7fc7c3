"""The local spool: records a tracker could not upload before it closed, kept for later.

`<dir>/<run_id>.jsonl` holds one header line ({"run_id", "tracking_uri"}) then one record per
line; `<dir>/<run_id>.files/` holds the files they point to (staged artifacts, image PNGs).
`sync` uploads them (`gantry tracking sync PATH`) and deletes the spool once all went through.
Uploads reconcile with what the server holds, so a sync that failed half-way can simply be run
again without storing any metric step twice.

Record paths inside the spool are stored relative to its folder, so a spool can move: a run
whose run dir is on an object store `publish`es its spool there (the node that wrote it may be
gone by the time anyone syncs), and `sync_url` fetches it back to upload it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Iterable

from pipeline import storage
from pipeline.errors import GantryError
from pipeline.tracking.records import Record, take_chunk


def files_dir(spool_dir: Path, run_id: str) -> Path:
    return Path(spool_dir) / f"{run_id}.files"


def write(spool_dir: Path, run_id: str, tracking_uri: str, records: Iterable[Record]) -> Path:
    """Append `records` to the run's spool (creating it), images saved as PNG files."""
    from PIL import Image

    path = Path(spool_dir) / f"{run_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a") as f:
        if new:
            f.write(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}) + "\n")
        for i, rec in enumerate(records):
            if rec.kind == "image" and rec.value is not None:
                png = files_dir(spool_dir, run_id) / f"image-{rec.key.replace('/', '~')}-{rec.step}-{i}.png"
                png.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rec.value.squeeze()).save(png)
                rec.path = str(png)
            if rec.path and Path(rec.path).is_relative_to(Path(spool_dir)):
                rec.path = os.path.relpath(rec.path, spool_dir)
            f.write(rec.to_json() + "\n")
    return path


def read(path: Path) -> tuple[dict, list[Record]]:
    """(header, records) of a spool file; GantryError naming the file and line if it is corrupt."""
    path = Path(path)
    if not path.is_file():
        raise GantryError(f"spool file {path} does not exist")
    lines = path.read_text().splitlines()
    try:
        header = json.loads(lines[0])
        run_id = header["run_id"]
        records = [Record.from_json(line) for line in lines[1:] if line.strip()]
    except (IndexError, KeyError, TypeError, ValueError) as e:
        raise GantryError(f"{path} is not a gantry tracking spool: {e}") from None
    if not isinstance(run_id, str):
        raise GantryError(f"{path}: header has no run_id")
    for rec in records:
        if rec.path and not os.path.isabs(rec.path):
            rec.path = str(path.parent / rec.path)
    return header, records


def sync(path: Path, tracking_uri: str | None = None) -> int:
    """Upload a spool to its run (at `tracking_uri`, default the URI it was written for) and
    delete it. Returns the number of records processed."""
    from mlflow import MlflowClient

    from pipeline.tracking.sender import Sender, Unreachable

    path = Path(path)
    header, records = read(path)
    uri = tracking_uri or header["tracking_uri"]
    client = MlflowClient(uri)
    try:
        client.get_run(header["run_id"])
    except Exception as e:
        raise GantryError(f"cannot reach run {header['run_id']} at {uri} ({e}); the spool {path} is kept") from None
    sender = Sender(client, header["run_id"])
    queue = deque(records)
    while queue:
        try:
            sender.send(take_chunk(queue), reconcile=True)
        except Unreachable as e:
            raise GantryError(f"MLflow at {uri} is unreachable ({e}); the spool {path} is kept, run sync again") from None
    shutil.rmtree(files_dir(path.parent, header["run_id"]), ignore_errors=True)
    path.unlink()
    return len(records)


def publish(spool_dir: Path, run_id: str, url: str) -> str:
    """Move the run's spool (its .jsonl and files) under the storage location `url`; return
    the URL of its .jsonl. Files first, the .jsonl last: a .jsonl found there is whole."""
    local = Path(spool_dir) / f"{run_id}.jsonl"
    files = files_dir(spool_dir, run_id)
    for f in sorted(files.rglob("*")) if files.is_dir() else []:
        if f.is_file():
            storage.write_bytes(storage.join(url, f.relative_to(spool_dir).as_posix()), f.read_bytes())
    target = storage.join(url, local.name)
    storage.write_bytes(target, local.read_bytes())
    shutil.rmtree(files, ignore_errors=True)
    local.unlink()
    return target


def sync_url(url: str, tracking_uri: str | None = None) -> int:
    """`sync` for a spool published to a storage location (`url` names its .jsonl): fetched to a
    temporary folder, uploaded, then removed from the store."""
    folder, name = storage.parent(url), storage.basename(url)
    files_url = storage.join(folder, name.removesuffix(".jsonl") + ".files")
    with tempfile.TemporaryDirectory(prefix="gantry-spool-") as tmp:
        storage.download(url, os.path.join(tmp, name))
        if storage.list_names(files_url):
            storage.download(files_url, os.path.join(tmp, storage.basename(files_url)))
        n = sync(Path(tmp) / name, tracking_uri)
    storage.remove(files_url)
    storage.remove(url)
    return n
