"""The ``--state-dtype`` table and JSON: one row per storage kind, peer and the bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .lines import (
    MISSING,
    LinePrinter,
    busy_cell,
    closing_header_lines,
    dump_json,
    time_line,
    versions,
)
from .lowp_kinds import BOUND_TARGET, STEPS
from .lowp_results import LowpRecord, LowpResults
from .problems import size_label

JSON_SCHEMA = "fastmomentum-bench-lowp/1"
#: (title, width) of each column after size and threads.
COLUMNS = (("row", 21), ("B/el", 6), ("ns/el", 7), ("vs f32", 6), ("want", 6), ("/bound", 6),
           ("want", 6), ("speed", 5), ("bound", 5), ("busy", 5))


def _yes_no(value: bool | None) -> str:
    return MISSING if value is None else "yes" if value else "NO"


def _fmt(value: float | None, spec: str) -> str:
    return MISSING if value is None else f"{value:{spec}}"


def row_cells(r: LowpRecord) -> list[str]:
    """A row's cells: size, threads, name, bytes, ns/element (or FAILED / --), the speed-up
    over float32 and its target, the ratio to the scaled bound and its target, whether each
    target is met, other processes' CPUs."""
    timed = r.ns_per_element
    ns = (_fmt(timed, ".3f") if timed is not None else
          "FAILED" if r.status == "failed" else MISSING)
    return [size_label(r.size), str(r.threads), r.name, f"{r.bytes_per_element:.2f}", ns,
            _fmt(r.speedup_vs_float32, ".2f"),
            MISSING if r.target_speedup is None else f">={r.target_speedup:.2f}",
            _fmt(r.ratio_to_scaled_bound, ".2f"),
            f"<={BOUND_TARGET:.2f}" if r.source == "fastmomentum" else MISSING,
            _yes_no(r.speed_target_met), _yes_no(r.bound_target_met),
            busy_cell(r.others_cpu)]


class LowpPrinter(LinePrinter):
    """Prints the header, each table's title and its rows as they are measured."""

    def header(self, results: LowpResults) -> None:
        """The command, versions, machine, method and row legend."""
        self.lines(header_lines(results))

    def table_start(self, variant: str) -> None:
        """The title and column titles of one update's table."""
        self.line()
        self.line(f"## low-precision state, single array, {variant}: one array of `size` "
                  "elements; ns per element (lower is better)")
        cells = [f"{'size':>5}", f"{'thr':>3}"]
        cells += [f"{t:<{w}}" if t == "row" else f"{t:>{w}}" for t, w in COLUMNS]
        self.line("  ".join(cells))

    def rows(self, records: list[LowpRecord]) -> None:
        """The rows of one (size, threads), then a blank line."""
        for r in records:
            size, threads, *rest = row_cells(r)
            cells = [f"{size:>5}", f"{threads:>3}"]
            cells += [f"{v:<{w}}" if t == "row" else f"{v:>{w}}"
                      for v, (t, w) in zip(rest, COLUMNS, strict=True)]
            self.line("  ".join(cells))
        self.line()


def header_lines(results: LowpResults) -> list[str]:
    """The lines before the tables."""
    meta, opts = results.metadata, results.options
    config = meta["fastmomentum_config"]
    lines = [
        "# fastmomentum benchmark, low-precision state (issue 19): one in-place momentum-SGD "
        "step per call",
        f"# command: {results.command}",
        f"# resolved: --state-dtype {' '.join(opts['kinds'])} --sizes "
        f"{' '.join(map(size_label, opts['sizes']))} --threads "
        f"{' '.join(map(str, opts['threads']))} --variant {' '.join(opts['variants'])} "
        f"--samples {opts['samples']} --min-sample-ms {opts['min_sample_s'] * 1e3:g}",
        f"# versions: {versions(meta)}",
        f"# CPU: {meta['cpu_model']}, {meta['logical_cpus']} logical CPUs; fastmomentum ISA in "
        f"use {config.get('isa')}, OpenMP {config.get('openmp_version')}",
        "# update: torch-convention momentum with coupled weight decay, lr=0.01, momentum=0.9, "
        "weight_decay=1e-4, dampening 0; p in [-1, 1), g in [-1e-3, 1e-3), the momentum set by "
        "a first step (b <- g + wd*p), each kind on its own arrays",
        time_line(opts, "the rows of one (size, threads) sampled in turn, in one process"),
        f"# checked before timing: each kind {STEPS} steps (lr 0.1) vs float32 NumPy from the "
        "same widened start, within its storage's rounding; each peer 2 steps vs float64; "
        "FAILED = not timed",
        "# B/el: bytes one step reads and writes per element: params 2x, grads 1x, momentum 2x "
        "(8-bit: codes 2 x 1 B + scales 2 x 4 B per 256), Kahan compensation 2x, each at its "
        "itemsize",
        "# vs f32 = float32 fastmomentum's time / the row's (> 1: faster), want = issue 19's "
        "target at n >= 1e7; /bound = the row's time / (rmw-bound's time x B/el / 20), want "
        f"<= {BOUND_TARGET:g}; speed, bound: whether each target is met; busy = other "
        "processes' CPUs during the case",
        "# rows:",
    ]
    lines += [f"#   {name:>21} = {info['description']}"
              + (f" [{info['status']}: {info['note']}]" if info["status"] != "ok" else "")
              for name, info in results.rows.items()]
    lines += closing_header_lines(opts, results.notes)
    return lines


def failure_lines(results: LowpResults) -> list[str]:
    """One line per failed check (printed after the tables)."""
    return [f"# FAILED: {r.name}, {r.variant} size {size_label(r.size)}, {r.threads} "
            f"thread(s): {r.note}" for r in results.failed]


def to_json(results: LowpResults) -> dict[str, Any]:
    """Every sample and derived figure, the metadata and the notes."""
    return {
        "schema": JSON_SCHEMA,
        "command": results.command,
        "options": results.options,
        "metadata": results.metadata,
        "rows": results.rows,
        "bound_target": BOUND_TARGET,
        "notes": results.notes,
        "duration_s": results.duration_s,
        "records": [r.to_dict() for r in results.records],
        "failed": [r.to_dict() for r in results.failed],
    }


def write_json(results: LowpResults, path: str | Path) -> Path:
    """Write :func:`to_json` to ``path``; returns the path."""
    return dump_json(to_json(results), path)
