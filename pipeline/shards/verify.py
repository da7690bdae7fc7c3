"""Re-hash every shard and decode every sample; report what is wrong instead of stopping."""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import storage
from pipeline.shards.manifest import Manifest, check_shard_bytes, load_manifest


@dataclass
class Report:
    manifest: Manifest
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        m = self.manifest
        head = (f"{m.root}: {self.shards}/{len(m.shards) + len(m.heldout)} shards, "
                f"{self.samples}/{m.samples + m.heldout_samples} samples checked"
                + (f" ({m.heldout_samples} held out)" if m.heldout else "")
                + f", {m.shape}, version {m.version}")
        return [head] + [f"  PROBLEM {p}" for p in self.problems] + [
            "OK" if self.ok else f"FAILED: {len(self.problems)} problem(s)"]


def read_samples(data: bytes) -> dict[str, dict[str, bytes]]:
    """A shard's bytes -> {key: {extension: bytes}}, in tar order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            if info.isreg():
                key, _, ext = info.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return samples


def verify_shards(out: str | Path) -> Report:
    m = load_manifest(out)
    report = Report(m)
    for entry in [*m.shards, *m.heldout]:
        try:
            data = storage.read_bytes(m.path(entry))
        except storage.StorageError as e:
            report.problems.append(f"{entry.url}: cannot read ({e.reason})")
            continue
        why = check_shard_bytes(entry, data)
        if why:
            report.problems.append(f"{entry.url}: {why}")
            continue
        try:
            samples = read_samples(data)
        except (tarfile.TarError, EOFError) as e:
            report.problems.append(f"{entry.url}: unreadable tar ({e})")
            continue
        report.shards += 1
        for key, files in samples.items():
            try:
                m.decode(files)
                report.samples += 1
            except ValueError as e:
                report.problems.append(f"{entry.url}: sample {key}: {e}")
        if len(samples) != entry.samples:
            report.problems.append(f"{entry.url}: holds {len(samples)} samples, manifest says {entry.samples}")
    return report
