"""Surrogate-free fitting of FS and MBE neurons to a target function.

The output of both neurons is linear in the parameters that scale spikes (MBE: basis weights
``w`` and bias, Eq. 8; FS: intensities ``d[t]`` and bias, Eq. 3) once the spike pattern is fixed,
so those come from a closed-form (ridge-stabilised) least-squares solve. The parameters that
decide *when* spikes fire (thresholds, resets, decay constants, input gain and offset) make the
loss piecewise constant, so they are searched derivative-free with CMA-ES, starting from the
binary-expansion point (``Vth[t] = r[t] = d[t]`` halving every step), with seeded restarts.
No gradient, surrogate or otherwise, is taken anywhere.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import cma
import numpy as np
import torch
from tqdm.auto import tqdm

from ..neurons.multibasis import DEFAULT_N, DEFAULT_T, finite_number, positive_int, simulate_bases
from .fitted import PROTOCOL_SAMPLES, FittedNeuron, error_figures
from .kinds import NeuronKind, get_kind
from .targets import Target, TensorFn, get_target

RIDGE = 1e-10
SEARCH_SAMPLES = 3000  # the search scores candidates on every k-th sample; the final solve uses all
DEFAULT_BUDGET = 8000  # candidate evaluations per fit, the same for every kind
RESTARTS = 3  # CMA-ES restarts per fit
MAX_SEED = 1_000_000  # CMA-ES seeds are derived as seed * 1000 + k and must stay below 2^32


@dataclass(frozen=True)
class Layout:
    """How a flat search vector maps onto neuron tables for one kind of neuron (``kind``, from
    :data:`~spikingjelly_mbe.fitting.kinds.KINDS`, which holds the kind's own parametrisation).

    Inputs are normalised as ``z = (x - center) / scale``, where ``center`` and ``scale`` are the
    mean and spread of the target's curvature ``|f''|`` (the paper's "critical interval"), so the
    search works in units where the hard part of the function has size one. MBE basis ``n``
    starts from ``u_n[0] = alpha * (sign_n * exp(g_n) * z + c_n)``: the gain is searched on a log
    scale with a fixed sign. ``signs`` and ``widen`` pick one of the kind's alternative starting
    layouts (:meth:`~spikingjelly_mbe.fitting.kinds.NeuronKind.layouts`, ``fit_neuron(multistart=True)``).
    """

    kind: NeuronKind
    N: int
    T: int
    dt: float
    decay: bool
    alpha: float  # threshold scale: the target's max |f| (Eq. 4)
    center: float
    scale: float
    lo: float
    hi: float
    signs: Optional[Tuple[float, ...]] = None  # MBE: each basis' gain sign (None: the kind's default)
    widen: float = 1.0  # MBE: the width of the nested initial intervals, relative to the default

    @property
    def dim(self) -> int:
        return self.kind.dim(self)

    def initial_point(self) -> np.ndarray:
        """The kind's starting point (the binary expansion, for the kinds shipped)."""
        return self.kind.initial_point(self)

    def tables(self, theta: torch.Tensor, bases: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, ...]:
        """``theta [P, dim] -> gain, offset [P, N]; vth, reset, intensity [P, N, T]``.

        With ``bases``, ``theta`` holds just those bases' parameters, in that order.
        """
        return self.kind.tables(self, theta, bases)

    def features(self, theta: torch.Tensor, x: torch.Tensor, bases: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Least-squares design ``[P, M, K]``: per-basis ``o_n[T]`` (MBE) or spikes ``s[t]`` (FS)."""
        return self.simulate(theta, x, bases)[0]

    def spikes_per_input(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[P]``: the spikes each candidate fires per input, all bases together, averaged over ``x``."""
        return self.simulate(theta, x)[1].sum(-1).mean(-1)

    def simulate(self, theta: torch.Tensor, x: torch.Tensor, bases: Optional[Sequence[int]] = None,
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`features` and the spike counts ``[P, M, N]`` of each basis on each input."""
        gain, offset, vth, reset, intensity = self.tables(theta, bases)
        u0 = x[None, :, None] * gain[:, None, :] + offset[:, None, :]  # [P, M, N]
        keep = self.kind.spike_features
        s, o, count = simulate_bases(u0, vth[:, None], reset[:, None], intensity[:, None], keep)
        return (s[..., 0].permute(1, 2, 0) if keep else o), count


def solve_linear(features: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Batched ridge least squares for ``[features, 1] @ coef ~ y``: ``(coef [P, K+1], mse [P])``."""
    A = torch.cat([features, torch.ones_like(features[..., :1])], -1)
    gram = A.transpose(1, 2) @ A
    scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    coef = torch.linalg.solve(gram + RIDGE * scale[:, None, None] * eye, A.transpose(1, 2) @ y[None, :, None])
    resid = (A @ coef)[..., 0] - y
    return coef[..., 0], (resid ** 2).mean(-1)


def _layout(kind: Union[str, NeuronKind], target: Target, N: int, T: int, dt: float, decay: bool) -> Layout:
    lo, hi = target.domain
    grid = torch.linspace(lo, hi, 4097, dtype=torch.float64)
    f = target.evaluate(grid)
    alpha = float(f.abs().max())
    if alpha == 0:
        raise ValueError(f"target {target.name!r} is identically 0 on {target.domain}")
    curvature = (f[2:] - 2 * f[1:-1] + f[:-2]).abs()
    if float(curvature.sum()) > 1e-9 * alpha:
        w = curvature / curvature.sum()
        center = float((w * grid[1:-1]).sum())
        scale = float(((w * (grid[1:-1] - center) ** 2).sum()).sqrt())
        scale = min(max(scale, (hi - lo) / 64), (hi - lo) / 2)
    else:  # linear target: the whole domain is equally hard
        center, scale = (lo + hi) / 2, (hi - lo) / 2
    kind = get_kind(kind)
    return Layout(kind, kind.bases(N), T, dt, decay, alpha, center, scale, lo, hi)


def _to_fitted(layout: Layout, theta: np.ndarray, coef: torch.Tensor, target: Target, seed: int,
               samples: int, evals: int) -> FittedNeuron:
    th = torch.as_tensor(theta, dtype=torch.float64)[None]
    gain, offset, vth, reset, intensity = (v[0] for v in layout.tables(th))
    params = {"gain": gain.tolist(), "offset": offset.tolist(), "bias": float(coef[-1]),
              **layout.kind.params(layout, th, (gain, offset, vth, reset, intensity), coef)}
    fitted = FittedNeuron(target=target.name, kind=layout.kind.name, N=layout.N, T=layout.T,
                          domain=target.domain, params=params,
                          fit={"samples": samples, "seed": seed, "evaluations": evals, "method": "cma-es+lstsq",
                               **({} if layout.kind.search_revision == 1 else {"revision": layout.kind.search_revision})})
    fitted.errors = error_figures(fitted.node(), target)
    return fitted


class _Search:
    """CMA-ES over the spike-timing parameters, scoring each candidate by its least-squares MSE;
    the kind's :meth:`~spikingjelly_mbe.fitting.kinds.NeuronKind.search` spends the budget."""

    def __init__(self, layout: Layout, xs: torch.Tensor, ys: torch.Tensor, budget: int, desc: str,
                 progress: bool, spike_tolerance: float = 0.0) -> None:
        self.layout, self.xs, self.ys, self.budget = layout, xs, ys, budget
        self.used = 0
        self.spike_tolerance = spike_tolerance
        self.tried: List[Tuple[np.ndarray, np.ndarray]] = []  # (thetas, losses) of every scored batch, when kept
        self.bar = tqdm(total=budget, desc=desc, disable=not progress, leave=False)
        self.best_theta, self.best_loss = layout.initial_point(), float("inf")
        self.score(self.best_theta[None])  # the binary-expansion point competes too

    def score(self, thetas: np.ndarray) -> List[float]:
        feats = self.layout.features(torch.as_tensor(thetas, dtype=torch.float32), self.xs)
        return self.losses(feats, thetas)

    def losses(self, feats: torch.Tensor, thetas: np.ndarray) -> List[float]:
        """The least-squares MSE of each candidate ``thetas[i]`` from its features; counts them
        against the budget and keeps the best."""
        _, mse = solve_linear(feats.to(torch.float64), self.ys)
        losses = torch.nan_to_num(mse, nan=float("inf")).tolist()
        self.used += len(losses)
        self.bar.update(len(losses))
        if self.spike_tolerance > 0:
            self.tried.append((np.array(thetas, dtype=np.float64), np.array(losses)))
        i = int(np.argmin(losses))
        if losses[i] < self.best_loss:
            self.best_loss, self.best_theta = losses[i], np.array(thetas[i], dtype=np.float64)
        return losses

    def cma(self, start: np.ndarray, sigma: float, seed: int, evals: int,
            objective: Callable[[np.ndarray], List[float]]) -> np.ndarray:
        """One seeded CMA-ES run of at most ``evals`` evaluations; returns its best point."""
        dim = start.size
        es = cma.CMAEvolutionStrategy(start, sigma, {"seed": seed, "verbose": -9, "maxfevals": max(evals, 1),
                                                     "popsize": 2 * int(3 + 3 * math.log(dim))})
        while not es.stop() and self.used < self.budget:
            cand = np.asarray(es.ask())
            es.tell(list(cand), objective(cand))
        return np.asarray(es.result.xbest if es.result.xbest is not None else start)

    def run(self, seed: int, restarts: int) -> np.ndarray:
        self.layout.kind.search(self, seed, restarts)
        self.bar.close()
        return self.frugal() if self.spike_tolerance > 0 else self.best_theta

    def frugal(self, chunk: int = 256) -> np.ndarray:
        """The spike-aware choice: of every candidate scored whose loss is within ``1 + spike_tolerance``
        of the best, the one firing the fewest spikes per search input (the first scored among equals)."""
        thetas = np.concatenate([t for t, _ in self.tried])
        losses = np.concatenate([loss for _, loss in self.tried])
        near = thetas[losses <= (1.0 + self.spike_tolerance) * self.best_loss]
        spikes = torch.cat([self.layout.spikes_per_input(torch.as_tensor(near[i:i + chunk], dtype=torch.float32),
                                                         self.xs) for i in range(0, len(near), chunk)])
        return near[int(torch.argmin(spikes))]


def fit_neuron(target: Union[str, Target, TensorFn], kind: Union[str, NeuronKind] = "mbe", N: int = DEFAULT_N, T: int = DEFAULT_T,
               domain: Optional[Tuple[float, float]] = None, samples: int = PROTOCOL_SAMPLES, seed: int = 0,
               dt: float = 1.0, decay: bool = True, budget: Optional[int] = None, restarts: int = RESTARTS,
               progress: bool = False, multistart: bool = False, spike_tolerance: float = 0.0) -> FittedNeuron:
    """Fit a neuron of ``kind`` (a name of :data:`~spikingjelly_mbe.fitting.kinds.KINDS`: ``'mbe'``,
    ``'fs'``) to ``target`` on ``domain`` (defaults to the target's own).

    ``samples`` evenly spaced points are used (the paper's uniform protocol, M=10,000); ``budget``
    is the number of candidate evaluations shared by ``restarts`` seeded CMA-ES runs (the same
    budget for FS and MBE gives a fair comparison). The same seed gives identical parameters.

    ``multistart=True`` runs that whole search (the same ``budget`` and seed each) from every one of
    the kind's starting layouts (:meth:`~spikingjelly_mbe.fitting.kinds.NeuronKind.layouts`; MBE:
    24 sign patterns and interval widths for ``N >= 2``, the first being the default layout) and
    keeps the fit of lowest MSE: as many times the work, for a search whose outcome depends strongly
    on where it starts (GELU N=4, T=16 on [-8, 8]: MSE 3.9e-5 from the default layout, 8.4e-6 with
    ``multistart``). Still deterministic; ``fit['layout']`` names the index of the layout kept.
    """
    kind = get_kind(kind)
    N, T, restarts = positive_int("N", N), positive_int("T", T), positive_int("restarts", restarts)
    budget = DEFAULT_BUDGET if budget is None else positive_int("budget", budget)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}), got {seed!r}")
    if not finite_number("dt", dt) > 0:
        raise ValueError(f"dt must be a positive time step, got dt={dt!r}")
    if not isinstance(decay, bool):
        raise TypeError(f"decay must be True or False, got {decay!r}")
    if not isinstance(multistart, bool):
        raise TypeError(f"multistart must be True or False, got {multistart!r}")
    if isinstance(spike_tolerance, bool) or not isinstance(spike_tolerance, numbers.Real) \
            or not 0.0 <= spike_tolerance < float("inf"):
        raise ValueError(f"spike_tolerance must be a finite number >= 0 (the relative MSE a fit may give up for "
                         f"fewer spikes, e.g. 0.1; 0: the plain objective), got {spike_tolerance!r}")
    tgt = get_target(target, domain)
    x = tgt.samples(samples)
    layout = _layout(kind, tgt, N, T, dt, decay)
    y = tgt.evaluate(x)
    stride = max(1, samples // SEARCH_SAMPLES)
    xs, ys = x[::stride], y[::stride]
    xs32 = xs.to(torch.float32)  # the search simulates in float32; the final solve in float64
    layouts = kind.layouts(layout) if multistart else [layout]
    best, evals = None, 0
    for i, lay in enumerate(layouts):
        desc = f"fit {kind.name} {tgt.name} N={layout.N} T={T}" + (f" layout {i + 1}/{len(layouts)}" if multistart else "")
        search = _Search(lay, xs32, ys, budget, desc, progress, float(spike_tolerance))
        theta = search.run(seed, restarts)
        evals += search.used
        coef, _ = solve_linear(lay.features(torch.as_tensor(theta)[None], x), y)
        fitted = _to_fitted(lay, theta, coef[0], tgt, seed, samples, search.used)
        if spike_tolerance:
            fitted.fit["spike_tolerance"] = float(spike_tolerance)
        if multistart:
            fitted.fit.update(layout=i, layouts=len(layouts))
        if best is None or fitted.errors["mse"] < best.errors["mse"]:
            best = fitted
    best.fit["evaluations"] = evals
    return best
