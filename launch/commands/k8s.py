"""`gantry k8s render CONFIG [key=value ...]`: print (or write) the KubeRay RayJob that trains
CONFIG with those overrides."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from launch.k8s_render import OVERLAYS

    k8s = subparsers.add_parser("k8s", help="Kubernetes manifests for gantry runs")
    verbs = k8s.add_subparsers(dest="k8s_command", required=True)
    render = verbs.add_parser(
        "render",
        help="the RayJob that trains a config",
        description="Write the RayJob YAML that runs `gantry train CONFIG key=value ... --workers N "
        "--launcher ray` on KubeRay. Image, pod resources and GPU placement come from the kustomize "
        "overlay (k8s/overlays). The job's pods share no disk, so data.path and train.out_dir must be "
        "object-store URLs (s3://, gs://; data may also be http(s)://). See k8s/README.md.",
    )
    render.add_argument("config", help="run config; the same path must exist inside the image")
    render.add_argument("overrides", nargs="*",
                        help="dotted overrides as for `gantry train`, e.g. data.path=s3://BUCKET/mnist-32")
    render.add_argument("--overlay", choices=OVERLAYS, default="cpu-dev", help="default: cpu-dev")
    render.add_argument("--image", help="container image to run instead of the overlay's")
    render.add_argument("--resume", metavar="latest|URL",
                        help="the job continues from this checkpoint (latest: the newest under the run dir)")
    render.add_argument("--out", help="write here instead of stdout")
    render.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    import yaml

    from launch.k8s_render import overlay_rayjob, render_rayjob
    from pipeline.config import load_config
    from pipeline.errors import GantryError

    # The same loading as `gantry train`, so a bad key or value fails here (exit 2), not in the pod.
    cfg = load_config(args.config, args.overrides)
    job = render_rayjob(cfg, args.config, overlay_rayjob(args.overlay), image=args.image,
                        overrides=args.overrides, resume=args.resume)
    text = yaml.safe_dump(job, sort_keys=False)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.out).write_text(text)
    except OSError as e:
        raise GantryError(f"cannot write {args.out}: {e.strerror}") from None
    print(f"wrote {args.out} (RayJob {job['metadata']['name']}, {cfg.workers} workers, overlay {args.overlay})",
          file=sys.stderr)
    return 0
