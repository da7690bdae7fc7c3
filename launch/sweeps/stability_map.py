"""The stability map of a sweep over a grid of two keys: one cell per pair of values, coloured by
the final metric (the mean over the cell's trials), diverged, collapsed and failed trials marked
in the cell, as a PNG."""
from __future__ import annotations

import io

MARKS = {"diverged": "diverged", "collapsed": "collapsed", "failed": "failed", "stopped": "stopped"}


def grid_keys(spec) -> list[str] | None:
    keys = [k for k, d in spec.space.items() if d.kind == "grid"]
    return keys if len(keys) == 2 else None


def stability_map(rows: list[dict], spec) -> bytes | None:
    """PNG bytes, or None when the sweep is not a grid over exactly two keys."""
    keys = grid_keys(spec)
    if keys is None:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    xs, ys = spec.space[keys[0]].values, spec.space[keys[1]].values
    value = np.full((len(ys), len(xs)), np.nan)
    notes = [["" for _ in xs] for _ in ys]
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            cell = [r for r in rows if r["values"][keys[0]] == x and r["values"][keys[1]] == y]
            scores = [r["value"] for r in cell if r["value"] is not None and r["outcome"] not in ("diverged", "failed")]
            if scores:
                value[i, j] = float(np.mean(scores))
            marks = sorted({MARKS[r["outcome"]] for r in cell if r["outcome"] in MARKS})
            modes = sorted({r["modes"] for r in cell if r.get("modes")})
            notes[i][j] = "\n".join(([f"{value[i, j]:.4g}"] if scores else []) + modes + marks)
    fig, ax = plt.subplots(figsize=(1.4 * len(xs) + 2.5, 1.1 * len(ys) + 1.8), dpi=100)
    cmap = plt.get_cmap("viridis" if spec.mode == "max" else "viridis_r").copy()
    cmap.set_bad("#d9d9d9")  # no score: every trial of the cell diverged or failed
    im = ax.imshow(np.ma.masked_invalid(value), cmap=cmap, origin="lower", aspect="auto")
    for i in range(len(ys)):
        for j in range(len(xs)):
            bright = not np.isfinite(value[i, j]) or sum(cmap(im.norm(value[i, j]))[:3]) > 1.8
            ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=8, color="black" if bright else "white")
    ax.set_xticks(range(len(xs)), [f"{x:g}" if isinstance(x, float) else str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [f"{y:g}" if isinstance(y, float) else str(y) for y in ys])
    ax.set_xlabel(keys[0])
    ax.set_ylabel(keys[1])
    ax.set_title(f"sweep {spec.name}: final {spec.metric} ({spec.mode} is best)")
    fig.colorbar(im, ax=ax, label=spec.metric)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
