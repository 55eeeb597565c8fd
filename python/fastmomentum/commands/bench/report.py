"""The human-readable table and the JSON file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from .contention import BUSY_WARNING
from .lines import (
    MISSING,
    LinePrinter,
    busy_cell,
    closing_header_lines,
    dump_json,
    time_line,
    versions,
)
from .problems import LAYOUTS, RTOL, VARIANTS, size_label
from .results import FAILED, NOT_APPLICABLE, OK, UNAVAILABLE, Record, Results, Row

JSON_SCHEMA = "fastmomentum-bench/1"
SUMMARY_COLUMNS = (("GB/s", 6), ("/bound", 6), ("/best", 5), ("best peer", 18), ("vs numpy", 8),
                   ("busy", 5))


def _ns(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def cell(record: Record | None) -> str:
    """A table cell: ns/element, ``FAILED``, ``n/a`` or ``--`` (unavailable or not selected)."""
    if record is None or record.status == UNAVAILABLE:
        return MISSING
    if record.status == FAILED:
        return "FAILED"
    if record.status == NOT_APPLICABLE:
        return "n/a"
    ns = record.ns_per_element
    return _ns(ns) if ns is not None else MISSING


class TablePrinter(LinePrinter):
    """Prints the header, then each table's title, column titles and rows as they come."""

    def __init__(self, out: TextIO | None, implementations: dict[str, dict[str, Any]]) -> None:
        super().__init__(out)
        self.impls = implementations
        self.widths = {name: max(len(info["label"]), 7) for name, info in implementations.items()}

    def header(self, results: Results) -> None:
        """The command, versions, machine, method and column legend."""
        self.lines(header_lines(results))

    def table_start(self, dtype: str, layout: str, variant: str) -> None:
        """The title and column titles of the table for one (dtype, layout, variant)."""
        shape = LAYOUTS[layout]
        where = ("one array of `size` elements" if shape.n_arrays == 1 else
                 f"a list of {shape.n_arrays} arrays, `size` elements in all, split evenly")
        self.line()
        self.line(f"## {dtype}, {shape.describe()}, {variant}: {where}; ns per element "
                  "(lower is better)")
        cells = [f"{'size':>5}", f"{'thr':>3}"]
        cells += [f"{info['label']:>{self.widths[name]}}" for name, info in self.impls.items()]
        cells += [f"{title:>{width}}" for title, width in SUMMARY_COLUMNS]
        self.line("  ".join(cells))

    def row(self, row: Row) -> None:
        """One row: size, threads, each implementation's cell, fastmomentum's summary."""
        _, _, _, size, threads = row.key
        summary = row.summary()
        cells = [f"{size_label(size):>5}", f"{threads:>3}"]
        cells += [f"{cell(row.cells.get(name)):>{self.widths[name]}}" for name in self.impls]

        def fmt(key: str, spec: str, suffix: str = "") -> str:
            value = summary[key]
            return MISSING if value is None else f"{value:{spec}}{suffix}"

        values = (fmt("fastmomentum_gb_per_s", ".1f"), fmt("ratio_to_bound", ".2f"),
                  fmt("ratio_to_best_peer", ".2f"), summary["best_peer"] or MISSING,
                  fmt("speedup_over_numpy", ".1f", "x"),
                  busy_cell(summary["others_cpu"]))
        cells += [f"{v:>{w}}" for v, (_, w) in zip(values, SUMMARY_COLUMNS, strict=True)]
        self.line("  ".join(cells))


def _grain(config: dict[str, Any]) -> str:
    """When a fastmomentum call stays serial, in the words of this build's config."""
    if "grain_bytes" in config:
        return f"stays serial below {config['grain_bytes']} bytes of parameters per thread"
    if "grain" in config:
        return f"stays serial below {config['grain']} elements per thread"
    return "serial threshold unknown"


def header_lines(results: Results) -> list[str]:
    """The lines before the tables: what ran, on what, how, and how to read the columns."""
    meta, opts = results.metadata, results.options
    config = meta["fastmomentum_config"]
    caches = " ".join(f"{k} {v}" for k, v in meta["caches"].items()) or "unknown"
    rtols = " / ".join(f"{v:g} {k.name}" for k, v in RTOL.items())
    lines = [
        "# fastmomentum benchmark: one in-place momentum-SGD step per call",
        f"# command: {results.command}",
        f"# resolved: {resolved_options(opts)}",
        f"# versions: {versions(meta)}",
        f"# python: {meta['python_executable']}; {meta['platform']}",
        f"# CPU: {meta['cpu_model']}, {meta['logical_cpus']} logical CPUs, caches {caches}; "
        f"ISA flags: {' '.join(meta['cpu_isa_flags']) or 'unknown'}",
        f"# fastmomentum: ISA in use {config.get('isa')} (compiled: "
        f"{' '.join(config.get('isas_compiled', []))}), OpenMP {config.get('openmp_version')}, "
        f"{_grain(config)}, fp_contract {config.get('fp_contract')}",
        "# update: torch-convention momentum with coupled weight decay, lr=0.01, momentum=0.9, "
        "weight_decay=1e-4, dampening 0 (heavy-ball or Nesterov)",
        time_line(opts, "every implementation steps the same arrays, in one process, the "
                  "row's implementations sampled in turn"),
        f"# verified before timing: {3} steps on fresh copies of a problem of the same "
        f"structure with min(size, {size_label(opts['verify_max_elements'])}) elements, vs the "
        "reference, fastmomentum.commands.bench.numpy_baseline (plain NumPy in the dtype); "
        f"assert_allclose rtol {rtols}, atol rtol*max|reference|; FAILED = wrong result, not timed",
        "# list layout: `size` = total elements over all arrays, each array allocated on its "
        "own; fm-flat steps a copy of them in one FlatGroup",
        "# columns: ns per element; * = serial: one thread at every thread count",
    ]
    lines += [f"#   {info['label']:>9} = {name}: {info['description']}"
              + (f" [{info['status']}]" if info["status"] != OK else "")
              for name, info in results.implementations.items()]
    lines += [
        "#   GB/s = fastmomentum's 5 arrays x itemsize x size / time; /bound = its time / "
        "rmw-bound's (1.00 = at the floor); /best = its time / the best peer's (< 1: "
        "fastmomentum is faster); vs numpy = numpy's time / its time",
        f"#   busy = CPUs' worth of work by other processes during the row ('!' above "
        f"{BUSY_WARNING:g}: a shared machine disturbed the timings, multi-thread ones first)",
    ]
    lines += closing_header_lines(opts, results.notes)
    return lines


def resolved_options(opts: dict[str, Any]) -> str:
    """The options of a run as command-line flags (every default spelled out)."""
    sizes = {k: " ".join(size_label(n) for n in v) for k, v in opts["sizes"].items()}
    sizes_text = "; ".join(f"{k}: {v}" for k, v in sizes.items())
    return (f"--dtype {' '.join(opts['dtypes'])} --sizes ({sizes_text}) --threads "
            f"{' '.join(map(str, opts['threads']))} --variant {' '.join(opts['variants'])} "
            f"--layout {' '.join(opts['layouts'])} --impl {' '.join(opts['impls'])} "
            f"--samples {opts['samples']} --min-sample-ms {opts['min_sample_s'] * 1e3:g}")


def failure_lines(results: Results) -> list[str]:
    """One line per failed verification (printed after the tables)."""
    return [f"# FAILED: {r.impl}, {r.dtype} {r.layout} {r.variant} size {size_label(r.size)}, "
            f"{r.threads} thread(s): {r.note}" for r in results.failed]


def to_json(results: Results) -> dict[str, Any]:
    """Every raw median and sample, the summary of each row, the metadata and the notes."""
    return {
        "schema": JSON_SCHEMA,
        "command": results.command,
        "options": {**results.options,
                    "sizes": {k: list(v) for k, v in results.options["sizes"].items()}},
        "metadata": results.metadata,
        "method": {
            "time": "median over samples of (loop time / calls); loops of back-to-back calls "
                    "lasting >= min_sample_s, after a warm-up; a row's implementations sampled "
                    "in turn (one loop of each, then again)",
            "verification": "3 steps on fresh copies vs fastmomentum.commands.bench.numpy_baseline",
            "rtol": {k.name: v for k, v in RTOL.items()},
            "atol": "rtol * max|reference|",
            "bytes_per_element": "5 x itemsize (read p, g, b; write p, b)",
            "hyper": {name: vars(h) for name, h in VARIANTS.items() if name != "momentum"},
        },
        "implementations": results.implementations,
        "notes": results.notes,
        "duration_s": results.duration_s,
        "records": [r.to_dict() for r in results.records],
        "rows": [{"dtype": row.key[0], "layout": row.key[1], "variant": row.key[2],
                  "size": row.key[3], "threads": row.key[4], **row.summary()}
                 for row in results.rows()],
        "failed": [r.to_dict() for r in results.failed],
    }


def write_json(results: Results, path: str | Path) -> Path:
    """Write :func:`to_json` to ``path``; returns the path."""
    return dump_json(to_json(results), path)

