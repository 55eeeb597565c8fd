"""Does it still train? Low-precision storage kinds against float32 on two small real problems.

Two NumPy MLPs (the demo's: one tanh hidden layer, softmax cross-entropy, hand-written backprop,
:mod:`fastmomentum.commands.demo.mlp`) trained with torch-convention momentum SGD (momentum 0.9,
warmup + cosine decay to 0, no weight decay) through ``fastmomentum.functional.sgd_``, once per
storage kind (:data:`KINDS`) and seed:

- ``digits``: scikit-learn's ``load_digits`` (8x8 images, shipped with scikit-learn, no download),
  pixels scaled to [0, 1], one fixed split of 1297 training and 500 test images; a 64-128-10 MLP;
- ``spirals``: the demo's three spirals (2000 training, 1000 test points); a 2-128-3 MLP.

A seed fixes the initialisation (drawn in float32, then stored in the kind's dtype) and the
mini-batch order, so the kinds of one seed differ only in how the state is stored. The forward and
backward passes run in float32 on the stored parameters widened to float32 (a Kahan kind's model is
its 16-bit parameters; the compensation lives only in the update), and the gradients are handed to
``sgd_`` in float32. After each epoch the loss is measured on the whole training set and the loss
and accuracy on the test set. The learning rates are those float32 trains well with: small enough
at the end of the cosine that a round-to-nearest bfloat16 parameter stops moving.

Prints one line per run, then a markdown table: the mean ± standard deviation over the seeds of the
final test accuracy and training loss of each kind, and its accuracy difference to float32 (the
mean of the per-seed differences) against the target. Writes files only when asked: ``--json PATH``
every curve, ``--plot PATH`` the training-loss curves (needs matplotlib). Needs scikit-learn
(``pip install scikit-learn``) and ml_dtypes (``pip install "fastmomentum[bfloat16]"``).

Example: ``python bench/lowp_study.py --plot study.png --json study.json``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

import fastmomentum as fm
from fastmomentum import schedules
from fastmomentum.commands.demo import mlp
from fastmomentum.commands.demo.data import CLASSES, spirals

MOMENTUM = 0.9
WARMUP_FRACTION = 0.05


class Kind(NamedTuple):
    """How one run stores its state: parameters, momentum buffers, and the parameters' write-back
    (``"nearest"``, ``"stochastic"`` or ``"kahan"``; float32 parameters are written exactly)."""

    params: str
    buffers: str  # "float32", "bfloat16", "float16" or "8-bit"
    write_back: str
    target: float | None  # the largest accepted accuracy loss against float32, in points


KINDS = {
    "float32": Kind("float32", "float32", "exact", None),
    "bf16 momentum": Kind("float32", "bfloat16", "exact", 0.5),
    "fp16 momentum": Kind("float32", "float16", "exact", 0.5),
    "8-bit momentum": Kind("float32", "8-bit", "exact", 0.5),
    "bf16 params, nearest": Kind("bfloat16", "bfloat16", "nearest", None),
    "bf16 params, stochastic": Kind("bfloat16", "bfloat16", "stochastic", 1.0),
    "bf16 params, Kahan": Kind("bfloat16", "bfloat16", "kahan", 1.0),
    "fp16 params, Kahan": Kind("float16", "float16", "kahan", 1.0),
}
"""The storage kinds compared. 16-bit parameters keep 16-bit momentum (the all-16-bit state a
user picks them for), so each differs from "bf16 momentum" / "fp16 momentum" by the parameters'
storage alone."""


def make_state(kind: Kind, init: Sequence[np.ndarray], seed: int
               ) -> tuple[list[np.ndarray], list[Any], dict[str, Any]]:
    """The stored parameters (``init``, float32, rounded to nearest), the zero momentum buffers
    and the storage's own ``sgd_`` keywords: the one place that knows how a kind is stored."""
    dtype = np.dtype(_bfloat16() if kind.params == "bfloat16" else kind.params)
    params = [p.astype(dtype) for p in init]
    if kind.buffers == "8-bit":  # codes, and one float32 scale per block of 256 elements
        buffers: list[Any] = [(np.zeros(p.shape, np.int8), np.zeros(-(-p.size // 256), np.float32))
                              for p in params]
    else:
        bdtype = _bfloat16() if kind.buffers == "bfloat16" else kind.buffers
        buffers = [np.zeros(p.shape, bdtype) for p in params]
    keywords: dict[str, Any] = {}
    if kind.write_back == "kahan":
        keywords["compensations"] = [np.zeros_like(p) for p in params]
    elif kind.write_back == "stochastic":
        keywords.update(rounding="stochastic", seed=seed)
    return params, buffers, keywords


def _bfloat16() -> Any:
    import ml_dtypes  # an optional dependency (the bfloat16 extra)

    return ml_dtypes.bfloat16


class Dataset(NamedTuple):
    """A classification problem and how it is trained."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classes: int
    hidden: int
    epochs: int
    batch: int
    peak_lr: float


def digits(epochs: int = 60) -> Dataset:
    """scikit-learn's 1797 digits, pixels / 16, the first 500 of a fixed permutation as test set."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(12345).permutation(len(y))
    X = (X / 16).astype(np.float32)[order]
    y = y[order]
    return Dataset(X[500:], y[500:], X[:500], y[:500], 10, 128, epochs, 32, 0.1)


def spiral_problem(epochs: int = 80) -> Dataset:
    """The demo's spirals with the demo's seeds (training set 1, test set 2)."""
    X, y = spirals(2000, seed=1, dtype=np.float32)
    X_test, y_test = spirals(1000, seed=2, dtype=np.float32)
    return Dataset(X, y, X_test, y_test, CLASSES, 128, epochs, 50, 0.2)


class Curves(NamedTuple):
    """Per epoch, from epoch 0 (the initialisation) on: the loss on the whole training set, the
    test loss and the test accuracy."""

    train_loss: list[float]
    test_loss: list[float]
    test_accuracy: list[float]


def train(data: Dataset, kind: Kind, seed: int) -> Curves:
    """One run: ``data.epochs`` epochs of mini-batch momentum SGD with ``kind``'s storage."""
    rng = np.random.default_rng(seed)
    init = mlp.init(data.X.shape[1], data.hidden, data.classes, rng, np.float32)
    params, buffers, keywords = make_state(kind, init, seed)
    steps_per_epoch = -(-len(data.y) // data.batch)
    total = data.epochs * steps_per_epoch
    lr = schedules.warmup_cosine_decay(0.0, data.peak_lr, round(WARMUP_FRACTION * total), total,
                                       decay_steps_include_warmup=True)
    curves = Curves([], [], [])
    step = 0
    for epoch in range(data.epochs + 1):
        if epoch > 0:
            order = rng.permutation(len(data.y))
            for start in range(0, len(data.y), data.batch):
                batch = order[start:start + data.batch]
                _, grads, _ = mlp.loss_and_grads(_widened(params), data.X[batch], data.y[batch])
                fm.functional.sgd_(params, grads, buffers, lr=lr(step), momentum=MOMENTUM,
                                   first_step=step == 0, step=step, **keywords)
                step += 1
        model = _widened(params)
        curves.train_loss.append(mlp.loss_and_grads(model, data.X, data.y)[0])
        test_loss, _, test_accuracy = mlp.loss_and_grads(model, data.X_test, data.y_test)
        curves.test_loss.append(test_loss)
        curves.test_accuracy.append(test_accuracy)
    return curves


def _widened(params: list[np.ndarray]) -> list[np.ndarray]:
    """The model the stored parameters define, in float32 (float32 arrays are not copied)."""
    return [p.astype(np.float32, copy=False) for p in params]


def run(datasets: dict[str, Dataset], kinds: Sequence[str], seeds: Sequence[int],
        quiet: bool = False) -> dict[str, dict[str, list[Curves]]]:
    """Every (dataset, kind, seed) run; a progress line per run unless ``quiet``."""
    results: dict[str, dict[str, list[Curves]]] = {}
    for name, data in datasets.items():
        results[name] = {}
        for kind in kinds:
            results[name][kind] = []
            for seed in seeds:
                begin = time.perf_counter()
                curves = train(data, KINDS[kind], seed)
                results[name][kind].append(curves)
                if not quiet:
                    print(f"{name:8} {kind:24} seed {seed}: test accuracy "
                          f"{curves.test_accuracy[-1]:7.2%}, training loss "
                          f"{curves.train_loss[-1]:.4f}  ({time.perf_counter() - begin:.1f} s)",
                          flush=True)
    return results


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, dict[str, list[Curves]]]) -> tuple[str, bool]:
    """The markdown table, and whether every kind with a target meets it on every dataset."""
    names = list(results)
    head = "| kind | state bytes/param |" + "".join(
        f" {n}: test accuracy % | {n}: Δ vs float32 | {n}: training loss |" for n in names)
    lines = [head, "|" + "---|" * (2 + 3 * len(names))]
    all_met = True
    for kind, spec in KINDS.items():
        if kind not in results[names[0]]:
            continue
        row = f"| {kind} | {state_bytes(spec):.3g} |"
        for n in names:
            runs = results[n][kind]
            acc = [100 * c.test_accuracy[-1] for c in runs]
            base = [100 * c.test_accuracy[-1] for c in results[n]["float32"]]
            loss = [c.train_loss[-1] for c in runs]
            (am, asd), (lm, lsd) = _mean_sd(acc), _mean_sd(loss)
            delta = statistics.fmean(a - b for a, b in zip(acc, base, strict=True))
            verdict = ""
            if spec.target is not None:
                met = delta >= -spec.target
                all_met &= met
                verdict = f" ({'meets' if met else 'MISSES'} ≥ -{spec.target:g})"
            row += f" {am:.2f} ± {asd:.2f} | {delta:+.2f}{verdict} | {lm:.4f} ± {lsd:.4f} |"
        lines.append(row)
    return "\n".join(lines), all_met


def state_bytes(kind: Kind) -> float:
    """Bytes per parameter of the stored state: parameter, momentum, compensation."""
    size = {"float32": 4, "bfloat16": 2, "float16": 2, "8-bit": 1 + 4 / 256}
    return (size[kind.params] + size[kind.buffers]
            + (size[kind.params] if kind.write_back == "kahan" else 0))


def to_json(results: dict[str, dict[str, list[Curves]]], datasets: dict[str, Dataset],
            seeds: Sequence[int], seconds: float) -> dict[str, Any]:
    """Every curve, with what produced it."""
    return {
        "fastmomentum": fm.__version__,
        "seconds": seconds,
        "seeds": list(seeds),
        "momentum": MOMENTUM,
        "schedule": f"linear warmup over {WARMUP_FRACTION:.0%} of the steps, cosine to 0",
        "datasets": {n: {"train": len(d.y), "test": len(d.y_test),
                         "mlp": [d.X.shape[1], d.hidden, d.classes], "epochs": d.epochs,
                         "batch": d.batch, "peak_lr": d.peak_lr} for n, d in datasets.items()},
        "kinds": {k: {**KINDS[k]._asdict(), "state_bytes": state_bytes(KINDS[k])}
                  for k in results[next(iter(results))]},
        "runs": {n: {k: [c._asdict() for c in runs] for k, runs in kinds.items()}
                 for n, kinds in results.items()},
    }


def plot(results: dict[str, dict[str, list[Curves]]], path: str) -> None:
    """Training loss per epoch, one panel per dataset: the mean over the seeds of each kind, the
    band between its lowest and highest seed shaded."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no window

    fig = Figure(figsize=(6.4 * len(results), 4.8), constrained_layout=True)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (name, kinds) in zip(axes, results.items(), strict=True):
        for i, (kind, runs) in enumerate(kinds.items()):
            losses = np.array([c.train_loss for c in runs])
            epochs = np.arange(losses.shape[1])
            final = statistics.fmean(c.test_accuracy[-1] for c in runs)
            style = "--" if KINDS[kind].params != "float32" else "-"
            ax.plot(epochs, losses.mean(axis=0), style, color=f"C{i}",
                    label=f"{kind} ({final:.1%})")
            ax.fill_between(epochs, losses.min(axis=0), losses.max(axis=0), color=f"C{i}",
                            alpha=0.15, linewidth=0)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{name}: training loss (final mean test accuracy)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("cross-entropy on the whole training set")
    fig.suptitle("fastmomentum: does it still train? momentum 0.9, warmup + cosine, "
                 f"{len(next(iter(next(iter(results.values())).values())))} seeds")
    fig.savefig(path, dpi=110)


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """One BLAS thread, when threadpoolctl can set it: the matrices are far too small for more
    (on 2 busy cores a threaded BLAS made the study 3 times slower)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: run the study, print the table, write the asked files."""
    parser = argparse.ArgumentParser(prog="python bench/lowp_study.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="runs per kind (default 3)")
    parser.add_argument("--epochs", type=float, default=1.0,
                        help="multiply every dataset's epochs (default 1)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS),
                        metavar="KIND", help="a subset of: " + ", ".join(KINDS))
    parser.add_argument("--json", metavar="PATH", help="write every curve as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write the loss curves (matplotlib)")
    args = parser.parse_args(argv)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("lowp_study needs scikit-learn for its digits: pip install scikit-learn",
              file=sys.stderr)
        return 2
    try:
        _bfloat16()
    except ImportError:
        print('lowp_study needs ml_dtypes: pip install "fastmomentum[bfloat16]"', file=sys.stderr)
        return 2
    kinds = list(dict.fromkeys(["float32", *args.kinds]))  # float32 is the baseline
    datasets = {"digits": digits(), "spirals": spiral_problem()}
    datasets = {n: d._replace(epochs=max(1, round(d.epochs * args.epochs)))
                for n, d in datasets.items()}
    seeds = range(args.seeds)
    print(f"# fastmomentum {fm.__version__}, {fm.get_num_threads()} threads; "
          + "; ".join(f"{n}: {len(d.y)}/{len(d.y_test)} points, MLP {d.X.shape[1]}-{d.hidden}-"
                      f"{d.classes}, {d.epochs} epochs of batch {d.batch}, peak lr {d.peak_lr}"
                      for n, d in datasets.items()), flush=True)
    begin = time.perf_counter()
    with _one_blas_thread():
        results = run(datasets, kinds, seeds)
    seconds = time.perf_counter() - begin
    text, all_met = table(results)
    print()
    print(text)
    print(f"\n{len(seeds)} seeds; mean ± standard deviation; Δ: mean per-seed difference of the "
          f"test accuracy to float32, in points; {seconds:.0f} s in all. Targets "
          + ("met." if all_met else "NOT all met."))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(to_json(results, datasets, seeds, seconds), f, indent=1)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
