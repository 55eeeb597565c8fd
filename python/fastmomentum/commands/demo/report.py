"""The demo's results: a loss/accuracy table for the terminal, and the loss curves as a PNG."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .train import METHODS, History


def table(histories: Mapping[str, History], rows: int = 8) -> str:
    """Training loss and test accuracy of each optimizer at ``rows`` evenly spaced epochs (the
    last included), then the median time of one ``opt.step``."""
    epochs = len(next(iter(histories.values())).train_loss)
    shown = sorted({round(epochs * (i + 1) / rows) - 1 for i in range(rows)} - {-1})
    names = list(histories)
    lines = [f"{'epoch':>5} {'lr':>8}" +
             "".join(f" | {METHODS[n].label:>13} loss  acc" for n in names)]
    for e in shown:
        lr = next(iter(histories.values())).lr[e]
        lines.append(f"{e + 1:5d} {lr:8.3g}" + "".join(
            f" | {histories[n].train_loss[e]:18.4f} {histories[n].test_accuracy[e]:4.0%}"
            for n in names))
    lines.append("loss: mean training cross-entropy over the epoch; "
                 "acc: accuracy on the test points")
    lines.append("lr: the learning rate of the epoch's last step")
    lines.append("median time of one opt.step: " + ", ".join(
        f"{METHODS[n].label} {histories[n].median_step_us():.1f} us" for n in names))
    return "\n".join(lines)


def plot(histories: Mapping[str, History], path: str | Path) -> None:
    """Save the training and test loss per epoch of each optimizer, side by side on one log
    scale, with the learning rate dotted on a second axis. Needs matplotlib."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no window

    fig = Figure(figsize=(4.2 * len(histories), 3.6), constrained_layout=True)
    axes = fig.subplots(1, len(histories), sharey=True, squeeze=False)[0]
    last = len(histories) - 1
    for i, (ax, (name, h)) in enumerate(zip(axes, histories.items(), strict=True)):
        epochs = range(1, len(h.train_loss) + 1)
        ax.plot(epochs, h.train_loss, label="training loss")
        ax.plot(epochs, h.test_loss, label="test loss")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{METHODS[name].label}: test accuracy {h.test_accuracy[-1]:.1%}")
        ax.grid(True, which="both", alpha=0.3)
        ax.plot([], [], ":", color="gray", label="learning rate (right axis)")  # legend entry
        lr_axis = ax.twinx()
        lr_axis.plot(epochs, h.lr, ":", color="gray")
        lr_axis.set_ylim(0, 1.05 * max(h.lr))
        lr_axis.tick_params(axis="y", colors="gray", labelright=i == last)
        if i == last:
            lr_axis.set_ylabel("learning rate", color="gray")
    axes[0].set_ylabel("cross-entropy")
    axes[0].legend(loc="lower left")
    fig.suptitle("fastmomentum demo: a NumPy MLP on three spirals, warmup + cosine schedule")
    fig.savefig(path, dpi=110)
