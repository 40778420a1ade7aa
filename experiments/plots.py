"""Matplotlib (Agg) figures saved as PNG: a fitted neuron, its spike raster, sweep lines and bars."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from spikingjelly_mbe import FittedNeuron  # noqa: E402
from spikingjelly_mbe.fitting import get_kind, get_target  # noqa: E402

from .tables import Row  # noqa: E402

Panel = Tuple[str, str, bool]  # (column, axis label, log scale)


def neuron_label(kind: str, N: int, decay: bool) -> str:
    """``FS``, ``MBE N=4`` or ``MBE N=4 no decay`` (a single-basis kind has no N)."""
    return kind.upper() if get_kind(kind).single_basis else f"{kind.upper()} N={N}" + ("" if decay else " no decay")


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fit_curve(fitted: FittedNeuron, points: int, path: Path) -> Path:
    """Target and fitted neuron over the domain (top) and the absolute error (bottom)."""
    target = get_target(fitted.target, fitted.domain)
    x = target.samples(points)
    with torch.no_grad():
        y, y_hat = target.fn(x), fitted.node().to(torch.float64)(x)
    label = neuron_label(fitted.kind, fitted.N, fitted.params.get("decay", False))
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6.4, 5.2), height_ratios=(2, 1))
    top.plot(x, y, lw=2.5, alpha=0.5, label=f"{fitted.target} (target)")
    top.plot(x, y_hat, lw=1.0, label=f"{label}, T={fitted.T}")
    top.set_title(f"{fitted.target}: {label}, T={fitted.T}, MSE {fitted.errors['mse']:.2e}")
    top.legend()
    bottom.semilogy(x, (y_hat - y).abs().clamp_min(1e-16))
    bottom.set_xlabel("x")
    bottom.set_ylabel("|error|")
    return _save(fig, path)


def spike_raster(fitted: FittedNeuron, count: int, path: Path) -> Path:
    """Spikes of every basis (rows) over time (columns) for ``count`` inputs spread over the domain."""
    lo, hi = fitted.domain
    x = torch.linspace(lo, hi, count + 2, dtype=torch.float64)[1:-1]
    node = fitted.node().to(torch.float64)
    with torch.no_grad():
        spikes, y_hat = node.spikes(x), node(x)  # [T, count, N], [count]
    fig, axes = plt.subplots(1, count, figsize=(2.6 * count, 0.5 * fitted.N + 1.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(spikes[:, i, :].T.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(f"x={x[i]:.3g} -> {y_hat[i]:.3g}", fontsize=9)
        ax.set_xlabel("t")
        ax.set_yticks(range(spikes.shape[-1]))
    axes[0][0].set_ylabel("basis")
    fig.suptitle(f"{fitted.key}: spikes per basis")
    return _save(fig, path)


def lines(rows: Sequence[Row], x: str, panels: Sequence[Panel], series: Callable[[Row], str],
          path: Path, title: str, discrete_x: bool = True) -> Path:
    """One panel per ``(column, label, log)``: each series' values against ``x`` (a tick at every ``x``
    value when ``discrete_x``)."""
    groups: Dict[str, List[Row]] = defaultdict(list)
    for row in rows:
        groups[series(row)].append(row)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
    for ax, (col, label, log) in zip(axes[0], panels):
        for name, members in sorted(groups.items()):
            members = sorted(members, key=lambda r: r[x])
            ax.plot([r[x] for r in members], [r[col] for r in members], "o-", label=name)
        ax.set_yscale("log" if log else "linear")
        if discrete_x:
            ax.set_xticks(sorted({r[x] for r in rows}))
        ax.set_xlabel(x)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def bars(rows: Sequence[Row], category: str, series: Callable[[Row], str], y: str, path: Path,
         title: str, log: bool) -> Path:
    """Grouped bars of ``y``: one group per ``category`` value, one bar per series."""
    cats = sorted({r[category] for r in rows})
    names = sorted({series(r) for r in rows})
    value = {(r[category], series(r)): r[y] for r in rows}
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(cats) * len(names) + 1.5), 4))
    for k, name in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i, c in enumerate(cats) if (c, name) in value]
        ax.bar(xs, [value[(c, name)] for c in cats if (c, name) in value], width, label=name)
    ax.set_xticks(np.arange(len(cats)), cats)
    ax.set_yscale("log" if log else "linear")
    ax.set_ylabel(y)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def layer_bars(rows: Sequence[Row], key: str, path: Path, title: str) -> Path:
    """One bar per row (named by its ``key`` column): firing rate and the SNN/ANN energy ratio under
    the strict and the paper's convention, side by side."""
    names = [r[key] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.28 * len(rows) + 1.6), sharey=True)
    for ax, (col, label) in zip(axes, (("firing_rate", "firing rate (spikes per neuron input)"),
                                       ("energy_strict", "energy SNN / ANN, strict (Eq. 14)"),
                                       ("energy_paper", "energy SNN / ANN, paper's convention (Eq. 14)"))):
        ax.barh(np.arange(len(rows)), [r[col] for r in rows])
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(np.arange(len(rows)), names, fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    return _save(fig, path)


def pareto(rows: Sequence[Row], front: Sequence[Row], label: Callable[[Row], str], objectives: Tuple[str, str],
           path: Path, title: str = "Loss vs energy: the non-dominated conversions") -> Path:
    """Every job as a point of the two minimised ``objectives`` (x, y), the non-dominated ``front``
    joined by a line, each point labelled; a loss with its 95 % interval (``loss_lo``, ``loss_hi``) gets
    it as an error bar."""
    x, y = objectives
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.scatter([r[x] for r in rows], [r[y] for r in rows], color="0.6", label="jobs")
    bounded = [r for r in rows if r.get(f"{y}_lo") is not None and r.get(f"{y}_hi") is not None]
    if bounded:
        ax.errorbar([r[x] for r in bounded], [r[y] for r in bounded], fmt="none", ecolor="0.6", elinewidth=0.8,
                    capsize=2, yerr=[[r[y] - r[f"{y}_lo"] for r in bounded], [r[f"{y}_hi"] - r[y] for r in bounded]],
                    label="95 % interval")
    ax.plot([r[x] for r in front], [r[y] for r in front], "o-", color="C3", label="Pareto front")
    for r in rows:
        ax.annotate(label(r), (r[x], r[y]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{x} (Eq. 14, SNN / ANN)")
    ax.set_ylabel(f"{y} (accuracy points / perplexity %)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def heatmap(matrix: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[Any], path: Path, title: str,
            label: str = "relative RMS error (log10)", xlabel: str = "layer") -> Path:
    """``matrix`` (rows x cols) as a log10 colour map, blank where ``nan``."""
    values = np.log10(np.asarray(matrix, dtype=float).clip(min=1e-12))
    longest = max((len(str(c)) for c in cols), default=0)
    long = longest > 4  # settings, not layer numbers: slanted, and room for them
    fig, ax = plt.subplots(figsize=(0.35 * len(cols) + 3 + 0.06 * longest * long,
                                    0.35 * len(rows) + 1.8 + 0.05 * longest * long))
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis")
    ax.set_xticks(np.arange(len(cols)), [str(c) for c in cols], fontsize=7, rotation=30 if long else 0,
                  ha="right" if long else "center")
    ax.set_yticks(np.arange(len(rows)), list(rows), fontsize=7)
    ax.set_xlabel(xlabel)
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
