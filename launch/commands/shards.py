"""`gantry shards build|add|verify`: write WebDataset shards with a manifest, append, check."""
from __future__ import annotations

import argparse
import time

SHOWN_SKIPS = 5   # names in the summary line; the manifest lists them all

ON_ERROR_HELP = ("a file that does not decode: fail (default) stops at the first and writes "
                 "nothing; skip leaves it out and lists it, with the reason, in the manifest")


def register(subparsers) -> None:
    p = subparsers.add_parser("shards", help="build, extend and verify WebDataset shards")
    sub = p.add_subparsers(dest="shards_command", required=True)

    b = sub.add_parser("build", help="write SOURCE as shards into OUT")
    b.add_argument("source", help="image folder (class sub-folders), .npz/.npy, or mnist|toy-ring|toy-grid; with "
                                  "--pairs a folder with A/ and B/, a folder of side-by-side AB images, or mnist-edges")
    b.add_argument("out", help="output directory (gets <name>-000000.tar … and manifest.json)")
    b.add_argument("--resolution", type=int, required=True, help="image side in pixels")
    b.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    b.add_argument("--filter", choices=["box", "bilinear", "lanczos"], default="box",
                   help="PIL resize filter (default box)")
    b.add_argument("--pad", action="store_true", help="zero-pad to the resolution instead of resizing")
    b.add_argument("--limit", type=int, help="take only the first N samples")
    b.add_argument("--name", help="shard file prefix (default: the source's name)")
    b.add_argument("--workers", type=int, help="encoding processes (default: all cores)")
    b.add_argument("--on-error", choices=["fail", "skip"], default="fail", help=ON_ERROR_HELP)
    b.add_argument("--pairs", action="store_true",
                   help="paired samples for image-to-image translation: each holds an image A and its target B "
                        "(files pairing up by path below A/ and B/; the left and right halves of an AB image; "
                        "mnist-edges: a digit's edge map and the digit), both fitted alike")
    b.add_argument("--heldout", type=float, metavar="FRACTION",
                   help="keep this fraction of the samples (chosen by key) out of training, for tests on real "
                        "data such as CAS (default: none; mnist holds out its own 10,000 test images)")
    b.set_defaults(func=run)

    a = sub.add_parser("add", help="append SOURCE to OUT as new shards and bump the data version")
    a.add_argument("out")
    a.add_argument("source")
    a.add_argument("--limit", type=int, help="take only the first N samples")
    a.add_argument("--workers", type=int, help="encoding processes (default: all cores)")
    a.add_argument("--on-error", choices=["fail", "skip"], default="fail", help=ON_ERROR_HELP)
    a.set_defaults(func=run)

    v = sub.add_parser("verify", help="re-hash every shard and decode every sample; exit 1 on a problem")
    v.add_argument("out")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.shards import add_shards, build_shards, verify_shards

    start = time.perf_counter()
    if args.shards_command == "verify":
        report = verify_shards(args.out)
        print("\n".join(report.lines()))
        return 0 if report.ok else 1
    if args.shards_command == "build":
        m = build_shards(args.source, args.out, args.resolution, shard_size=args.shard_size,
                         filter=args.filter, pad=args.pad, limit=args.limit, name=args.name,
                         workers=args.workers, on_error=args.on_error, heldout=args.heldout, pairs=args.pairs)
    else:
        m = add_shards(args.out, args.source, limit=args.limit, workers=args.workers,
                       on_error=args.on_error)
    size = sum(e.bytes for e in m.shards)
    print(f"{m.root}: {len(m.shards)} shards, {m.samples} samples, {size / 2**20:.1f} MiB, "
          f"{m.shape} ({m.transform}), version {m.version}, "
          f"{time.perf_counter() - start:.1f} s")
    print(images_line(m))
    return 0


def images_line(m) -> str:
    """What this command did with the source's images: kept, skipped (by name), and fitted."""
    from pipeline.shards.imaging import describe_fits
    from pipeline import storage
    from pipeline.shards.manifest import MANIFEST

    record = m.sources[-1]
    skipped = record["skipped"]
    if skipped:
        names = ", ".join(s["file"] for s in skipped[:SHOWN_SKIPS])
        more = f" and {len(skipped) - SHOWN_SKIPS} more" if len(skipped) > SHOWN_SKIPS else ""
        skips = f"{len(skipped)} unreadable skipped ({names}{more}; reasons in {storage.join(m.root, MANIFEST)})"
    else:
        skips = "none skipped"
    fits = describe_fits(record["fitted"], m.resolution, m.transform)
    held = record.get("heldout")
    added = f"{record['samples']} added" + (f" (+{held['samples']} held out: {m.heldout_rule})" if held else "")
    return f"images: {added}, {skips}; {fits}"
