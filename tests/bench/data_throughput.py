"""How fast the shard stream feeds images, against how fast a DCGAN-64 step eats them.

Builds MNIST shards at 32x32 (pad) and 64x64 (box resize) in a temp dir, streams them with 1 and
2 DataLoader workers from the local disk, then the 64x64 shards over the network from servers on
loopback: a plain HTTP server (`python -m http.server`) and an S3-compatible one (moto), times a
DCGAN-64 training step (batch 64, Adam, fp32) on this machine, and prints one JSON object: img/s
for each stream setting, the step's img/s, and each 64x64 source's best rate over the step's.
Usage: python tests/bench/data_throughput.py [--samples 8000] [--batches 100] [--no-network]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from pipeline.data import ShardStream
from pipeline.shards import build_shards

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/servers.py


def stream_rate(shards: str, workers: int, batches: int, batch: int = 64) -> float:
    s = ShardStream(shards, batch=batch, loader_workers=workers, shuffle_buffer=1000)
    for _ in range(5):    # worker start-up and the shuffle buffer filling are not throughput
        next(s)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(s)[1])
    rate = n / (time.perf_counter() - start)
    s.close()
    return rate


def dcgan64(z_dim=100, width=64, channels=3):
    """The DCGAN paper's 64x64 pair: four stride-2 (transposed) convs each way, BatchNorm."""
    w = width
    g = nn.Sequential(
        nn.ConvTranspose2d(z_dim, w * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(w * 8), nn.ReLU(True),
        nn.ConvTranspose2d(w * 8, w * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 4), nn.ReLU(True),
        nn.ConvTranspose2d(w * 4, w * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 2), nn.ReLU(True),
        nn.ConvTranspose2d(w * 2, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True),
        nn.ConvTranspose2d(w, channels, 4, 2, 1, bias=False), nn.Tanh())
    d = nn.Sequential(
        nn.Conv2d(channels, w, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
        nn.Conv2d(w, w * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 2), nn.LeakyReLU(0.2, True),
        nn.Conv2d(w * 2, w * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 4), nn.LeakyReLU(0.2, True),
        nn.Conv2d(w * 4, w * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 8), nn.LeakyReLU(0.2, True),
        nn.Conv2d(w * 8, 1, 4, 1, 0, bias=False), nn.Flatten())
    return g, d


def dcgan_rate(steps: int, batch: int = 64, z_dim: int = 100) -> float:
    """Real images per second one D step + one G step (non-saturating loss) consumes."""
    torch.manual_seed(0)
    g, d = dcgan64(z_dim)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    real = torch.rand(batch, 3, 64, 64) * 2 - 1
    softplus = nn.functional.softplus

    def step():
        fake = g(torch.randn(batch, z_dim, 1, 1))
        loss_d = softplus(-d(real)).mean() + softplus(d(fake.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = softplus(-d(fake)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=8000)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--no-network", action="store_true", help="local disk only")
    args = ap.parse_args()
    result = {"torch_threads": torch.get_num_threads(), "batch": 64}
    sources = ["disk"]
    with tempfile.TemporaryDirectory() as tmp:
        for res, pad in ((32, True), (64, False)):
            shards = Path(tmp) / f"mnist-{res}"
            build_shards("mnist", shards, res, pad=pad, limit=args.samples, shard_size=500)
            for workers in (1, 2):
                result[f"stream_{res}px_{workers}w_img_s"] = round(stream_rate(str(shards), workers, args.batches))
        if not args.no_network:
            sources += ["http", "s3"]
            result.update(network_rates(Path(tmp), args.samples, args.batches))
    result["dcgan64_step_img_s"] = round(dcgan_rate(args.steps), 1)
    for source in sources:
        prefix = "stream_64px" if source == "disk" else f"{source}_64px"
        best = max(result[f"{prefix}_1w_img_s"], result[f"{prefix}_2w_img_s"])
        result[f"{source}64_over_dcgan64"] = round(best / result["dcgan64_step_img_s"], 1)
    print(json.dumps(result))


def network_rates(tmp: Path, samples: int, batches: int) -> dict[str, int]:
    """The 64x64 shards streamed over HTTP and from S3, both on loopback."""
    from servers import HttpServer, S3Server

    rates = {}
    http = HttpServer(tmp / "mnist-64", tmp)
    try:
        for workers in (1, 2):
            rates[f"http_64px_{workers}w_img_s"] = round(stream_rate(http.url, workers, batches))
    finally:
        http.stop()
    s3 = S3Server(tmp)
    os.environ.update(s3.env)  # the loader's worker processes inherit the endpoint and keys
    try:
        url = f"{s3.bucket('bench')}/mnist-64"
        build_shards("mnist", url, 64, pad=False, limit=samples, shard_size=500)
        for workers in (1, 2):
            rates[f"s3_64px_{workers}w_img_s"] = round(stream_rate(url, workers, batches))
    finally:
        s3.stop()
    return rates


if __name__ == "__main__":
    main()
