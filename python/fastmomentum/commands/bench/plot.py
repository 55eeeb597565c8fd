"""The PNG: time per element against size, one line per implementation, single arrays only."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .problems import size_label
from .results import OK, Results

LINE_STYLES = {"peer": "-", "fastmomentum": "-", "bound": ":"}


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return False
    return True


def write_plot(results: Results, path: str | Path) -> Path | None:
    """One panel per (dtype, threads), for the single-array cases of one update (heavy-ball
    where measured); log-log axes. Uses the Agg canvas (no display, no pyplot state).

    Returns the path written, or ``None`` when there is nothing to plot (no single-array
    results, or fewer than one timed size).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    single = [r for r in results.records if r.layout == "single" and r.status == OK]
    if not single:
        return None
    variants = sorted({r.variant for r in single})
    variant = "heavy-ball" if "heavy-ball" in variants else variants[0]
    single = [r for r in single if r.variant == variant]
    dtypes = sorted({r.dtype for r in single})
    threads = sorted({r.threads for r in single})
    fig = Figure(figsize=(5.2 * len(threads), 4.0 * len(dtypes)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(dtypes), len(threads), squeeze=False, sharex=True)
    kinds = {name: info["kind"] for name, info in results.implementations.items()}
    for i, dtype in enumerate(dtypes):
        for j, n_threads in enumerate(threads):
            ax: Any = axes[i][j]
            for impl in results.implementations:
                points = sorted((r.size, r.ns_per_element) for r in single
                                if r.dtype == dtype and r.threads == n_threads and r.impl == impl)
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                kind = kinds[impl]
                ax.plot(xs, ys, LINE_STYLES.get(kind, "-"), marker="o", markersize=3,
                        linewidth=2.5 if kind == "fastmomentum" else 1.2, label=impl)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{dtype}, {n_threads} thread(s), {variant}, one array")
            ax.set_xlabel("elements")
            ax.set_ylabel("ns per element (lower is better)")
            ax.grid(True, which="both", alpha=0.3)
            sizes = sorted({r.size for r in single})
            ax.set_xticks(sizes, [size_label(n) for n in sizes])
            ax.legend(fontsize=7)
    fig.suptitle(f"fastmomentum bench: {results.command}", fontsize=9)
    target = Path(path)
    fig.savefig(target, dpi=110)
    return target
