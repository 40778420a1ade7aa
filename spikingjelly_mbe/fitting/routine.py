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

from ..neurons.multibasis import finite_number, positive_int, simulate_bases
from .fitted import FittedNeuron, error_figures
from .targets import Target, TensorFn, get_target

LN2 = math.log(2.0)
RIDGE = 1e-10
SEARCH_SAMPLES = 3000  # the search scores candidates on every k-th sample; the final solve uses all
DEFAULT_BUDGET = 8000  # candidate evaluations per fit, the same for every kind
MAX_SEED = 1_000_000  # CMA-ES seeds are derived as seed * 1000 + k and must stay below 2^32


@dataclass(frozen=True)
class Layout:
    """How a flat search vector maps onto neuron tables for one kind of neuron.

    Inputs are normalised as ``z = (x - center) / scale``, where ``center`` and ``scale`` are the
    mean and spread of the target's curvature ``|f''|`` (the paper's "critical interval"), so the
    search works in units where the hard part of the function has size one. MBE basis ``n``
    starts from ``u_n[0] = alpha * (sign_n * exp(g_n) * z + c_n)``: the gain is searched on a log
    scale with a fixed sign.
    """

    kind: str  # 'mbe' or 'fs'
    N: int
    T: int
    dt: float
    decay: bool
    alpha: float  # threshold scale: the target's max |f| (Eq. 4)
    center: float
    scale: float
    lo: float
    hi: float

    @property
    def per_basis(self) -> int:
        return 5 if self.decay else 2

    @property
    def dim(self) -> int:
        return 2 * self.T + 1 if self.kind == "fs" else self.N * self.per_basis

    def signs(self) -> torch.Tensor:
        """Basis 0 fires above its offset, then signs alternate so negative lobes are covered."""
        return torch.tensor([1.0 if n % 2 == 0 else -1.0 for n in range(self.N)], dtype=torch.float64)

    def ranges(self) -> list:
        """Initial input interval of each basis: the whole domain, then nested intervals of the
        critical region, halving every second basis."""
        out = [(self.lo, self.hi)]
        for n in range(1, self.N):
            half = 2.0 * self.scale / 2.0 ** ((n - 1) // 2)
            out.append((max(self.lo, self.center - half), min(self.hi, self.center + half)))
        return out

    def fs_point(self, a: float, b: float) -> np.ndarray:
        """FS search vector of the binary expansion of ``[a, b]``: ``u[0] = x - a`` and
        ``Vth[t] = r[t] = (b - a) 2^-(t+1)`` (see :meth:`tables`)."""
        halfwidth = (self.hi - self.lo) / 2
        width = (b - a) / (self.hi - self.lo)
        return np.concatenate([[(self.lo - a) / halfwidth], np.full(2 * self.T, width)])

    def initial_point(self) -> np.ndarray:
        """Binary expansion: each basis maps its interval onto ``[0, 2 alpha)`` with thresholds,
        resets and intensities halving every step (``tau = dt / ln 2``); FS: of the whole domain."""
        if self.kind == "fs":
            return self.fs_point(self.lo, self.hi)
        log_tau = math.log(self.dt / LN2)
        rows = []
        for (a, b), sign in zip(self.ranges(), self.signs().tolist()):
            gain = 2.0 * self.scale / (b - a)  # in units of alpha per unit z
            start = (a if sign > 0 else b) - self.center
            row = [math.log(gain), -sign * gain * start / self.scale]
            rows.append(row + ([log_tau] * 3 if self.decay else []))
        return np.asarray(rows, dtype=np.float64).ravel()

    def tables(self, theta: torch.Tensor, bases: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, ...]:
        """``theta [P, dim] -> gain, offset [P, N]; vth, reset, intensity [P, N, T]``.

        With ``bases`` (MBE only), ``theta`` holds just those bases' parameters, in that order.
        """
        P = theta.shape[0]
        t = torch.arange(self.T, dtype=theta.dtype)
        if self.kind == "fs":  # signed thresholds and resets, in units of the domain's binary expansion
            halfwidth = (self.hi - self.lo) / 2
            binary = halfwidth * 2.0 ** (-t)
            vth = binary * theta[:, 1:1 + self.T]
            reset = binary * theta[:, 1 + self.T:]
            gain = torch.ones(P, 1, dtype=theta.dtype)
            offset = -self.lo + halfwidth * theta[:, :1]
            return gain, offset, vth[:, None], reset[:, None], torch.ones_like(vth)[:, None]
        signs = self.signs().to(theta.dtype)
        if bases is not None:
            signs = signs[list(bases)]
        p = theta.view(P, signs.numel(), -1)
        gain = self.alpha * signs * torch.exp(p[..., 0]) / self.scale
        offset = self.alpha * p[..., 1] - gain * self.center
        if self.decay:
            tau = torch.exp(p[..., 2:5])  # [P, N, 3]
            tables = self.alpha * torch.exp(-self.dt / tau[..., None]) ** t  # Eq. 4: [P, N, 3, T]
            vth, reset, intensity = tables.unbind(2)
        else:
            vth = reset = intensity = torch.full((P, signs.numel(), self.T), self.alpha, dtype=theta.dtype)
        return gain, offset, vth, reset, intensity

    def features(self, theta: torch.Tensor, x: torch.Tensor, bases: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Least-squares design ``[P, M, K]``: per-basis ``o_n[T]`` (MBE) or spikes ``s[t]`` (FS)."""
        gain, offset, vth, reset, intensity = self.tables(theta, bases)
        u0 = x[None, :, None] * gain[:, None, :] + offset[:, None, :]  # [P, M, N]
        keep = self.kind == "fs"
        s, o, _ = simulate_bases(u0, vth[:, None], reset[:, None], intensity[:, None], keep)
        return s[..., 0].permute(1, 2, 0) if keep else o


def solve_linear(features: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Batched ridge least squares for ``[features, 1] @ coef ~ y``: ``(coef [P, K+1], mse [P])``."""
    A = torch.cat([features, torch.ones_like(features[..., :1])], -1)
    gram = A.transpose(1, 2) @ A
    scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    coef = torch.linalg.solve(gram + RIDGE * scale[:, None, None] * eye, A.transpose(1, 2) @ y[None, :, None])
    resid = (A @ coef)[..., 0] - y
    return coef[..., 0], (resid ** 2).mean(-1)


def _layout(kind: str, target: Target, N: int, T: int, dt: float, decay: bool) -> Layout:
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
    return Layout(kind, 1 if kind == "fs" else N, T, dt, decay, alpha, center, scale, lo, hi)


def _to_fitted(layout: Layout, theta: np.ndarray, coef: torch.Tensor, target: Target, seed: int,
               samples: int, evals: int) -> FittedNeuron:
    th = torch.as_tensor(theta, dtype=torch.float64)[None]
    gain, offset, vth, reset, intensity = (v[0] for v in layout.tables(th))
    params = {"gain": gain.tolist(), "offset": offset.tolist(), "bias": float(coef[-1])}
    if layout.kind == "fs":
        params.update(vth=vth[0].tolist(), reset=reset[0].tolist(), intensity=coef[:-1].tolist())
    else:
        params.update(weight=coef[:-1].tolist(), alpha=layout.alpha, dt=layout.dt, decay=layout.decay)
        if layout.decay:
            tau = torch.exp(th.view(layout.N, -1)[:, 2:5])
            params.update(tau_v=tau[:, 0].tolist(), tau_r=tau[:, 1].tolist(), tau_d=tau[:, 2].tolist())
    fitted = FittedNeuron(target=target.name, kind=layout.kind, N=layout.N, T=layout.T,
                          domain=target.domain, params=params,
                          fit={"samples": samples, "seed": seed, "evaluations": evals, "method": "cma-es+lstsq"})
    fitted.errors = error_figures(fitted.node(), target)
    return fitted


class _Search:
    """CMA-ES over the spike-timing parameters, scoring each candidate by its least-squares MSE.

    MBE: a joint CMA-ES run from the binary-expansion point, then block-coordinate sweeps (one
    basis' parameters at a time, the other bases' outputs cached), then a joint polish.
    FS (thresholds and resets signed, like the original FS neurons): the best binary expansions of
    sub-intervals of the domain, CMA-ES from each, coordinate sweeps over a signed grid, a polish.
    """

    def __init__(self, layout: Layout, xs: torch.Tensor, ys: torch.Tensor, budget: int, desc: str,
                 progress: bool) -> None:
        self.layout, self.xs, self.ys, self.budget = layout, xs, ys, budget
        self.used = 0
        self.bar = tqdm(total=budget, desc=desc, disable=not progress, leave=False)
        self.best_theta, self.best_loss = layout.initial_point(), float("inf")
        self.score(self.best_theta[None])  # the binary-expansion point competes too

    def score(self, thetas: np.ndarray) -> List[float]:
        feats = self.layout.features(torch.as_tensor(thetas, dtype=torch.float32), self.xs)
        return self._losses(feats, thetas)

    def _losses(self, feats: torch.Tensor, thetas: np.ndarray) -> List[float]:
        _, mse = solve_linear(feats.to(torch.float64), self.ys)
        losses = torch.nan_to_num(mse, nan=float("inf")).tolist()
        self.used += len(losses)
        self.bar.update(len(losses))
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

    def blockwise(self, seed: int, evals: int) -> None:
        """Optimise one basis at a time with the others' outputs fixed (cached)."""
        lay, per = self.layout, self.layout.per_basis
        for n in list(range(lay.N)) * 2:
            theta = self.best_theta.copy()
            fixed = lay.features(torch.as_tensor(theta[None], dtype=torch.float32), self.xs)[0]

            def objective(block: np.ndarray, n: int = n, theta: np.ndarray = theta, fixed: torch.Tensor = fixed):
                col = lay.features(torch.as_tensor(block, dtype=torch.float32), self.xs, bases=[n])[..., 0]
                feats = fixed.expand(len(block), -1, -1).clone()
                feats[..., n] = col
                full = np.repeat(theta[None], len(block), 0)
                full[:, n * per:(n + 1) * per] = block
                return self._losses(feats, full)

            self.cma(theta[n * per:(n + 1) * per], 0.3, seed + n, evals // (2 * lay.N), objective)

    def fs_starts(self, count: int) -> List[np.ndarray]:
        """The ``count`` best FS binary expansions of sub-intervals ``[a, b]`` of the domain (ends on a
        grid of 17 points), each scored like any candidate: where the spikes' resolution goes."""
        lay = self.layout
        ends = np.linspace(lay.lo, lay.hi, 17)
        points = np.stack([lay.fs_point(a, b) for i, a in enumerate(ends) for b in ends[i + 1:]])
        losses = self.score(points)
        return [points[i] for i in np.argsort(losses, kind="stable")[:count]]

    def fs_sweep(self, evals: int) -> None:
        """Coordinate sweeps over the FS thresholds and resets: each in turn is set to the best of a
        grid of signed values (``-2 .. 2`` times its step's binary threshold, and signed powers of
        two), the others fixed: moves CMA-ES's local steps cannot make."""
        lay = self.layout
        powers = 2.0 ** -np.arange(2, 2 * lay.T, 1.0)
        grid = np.concatenate([np.linspace(-2.0, 2.0, 33), powers, -powers])
        while evals >= len(grid):
            for i in range(1, lay.dim):
                if self.used + len(grid) > self.budget or evals < len(grid):
                    return
                candidates = np.repeat(self.best_theta[None], len(grid), 0)
                candidates[:, i] = grid
                self.score(candidates)
                evals -= len(grid)

    def run(self, seed: int, restarts: int) -> np.ndarray:
        lay = self.layout
        if lay.kind == "mbe" and lay.N > 1:
            third = self.budget // 3
            self.cma(lay.initial_point(), 0.3, seed * 1000 + 1, third, self.score)
            self.blockwise(seed * 1000 + 2, third)
            self.cma(self.best_theta, 0.1, seed * 1000 + 3, self.budget - self.used, self.score)
        elif lay.kind == "fs":
            # from the best binary expansions, CMA-ES in units of each start's scale (signs free), then a polish
            starts = self.fs_starts(max(1, restarts))
            share = (self.budget - self.used) // (2 * len(starts))
            for r, start in enumerate(starts):
                scale = np.concatenate([[1.0], start[1:]])
                self.cma(np.ones_like(start), 0.3, seed * 1000 + r + 1, share,
                         lambda phis, scale=scale, start=start: self.score(
                             np.asarray(phis) * scale + np.concatenate([[start[0] - 1.0], np.zeros(2 * lay.T)])))
            self.fs_sweep((self.budget - self.used) // 2)
            best = self.best_theta.copy()
            tiny = 1e-3 * float(np.abs(best[1:]).max())
            scale = np.concatenate([[1.0], np.where(np.abs(best[1:]) < tiny, tiny, best[1:])])
            self.cma(np.ones_like(best), 0.1, seed * 1000 + 99, self.budget - self.used,
                     lambda phis: self.score(np.asarray(phis) * scale + np.concatenate([[best[0] - 1.0],
                                                                                         np.zeros(2 * lay.T)])))
        else:
            rng = np.random.default_rng(seed)
            x0 = lay.initial_point()
            for r in range(max(1, restarts)):
                start = x0 if r == 0 else x0 + rng.normal(0.0, 0.3, size=x0.shape)
                self.cma(start, 0.3, seed * 1000 + r + 1, self.budget // max(1, restarts), self.score)
        self.bar.close()
        return self.best_theta


def fit_neuron(target: Union[str, Target, TensorFn], kind: str = "mbe", N: int = 4, T: int = 16,
               domain: Optional[Tuple[float, float]] = None, samples: int = 10_000, seed: int = 0,
               dt: float = 1.0, decay: bool = True, budget: Optional[int] = None, restarts: int = 3,
               progress: bool = False) -> FittedNeuron:
    """Fit an FS or MBE neuron to ``target`` on ``domain`` (defaults to the target's own).

    ``samples`` evenly spaced points are used (the paper's uniform protocol, M=10,000); ``budget``
    is the number of candidate evaluations shared by ``restarts`` seeded CMA-ES runs (the same
    budget for FS and MBE gives a fair comparison). The same seed gives identical parameters.
    """
    if kind not in ("mbe", "fs"):
        raise ValueError(f"kind must be 'mbe' or 'fs', got {kind!r}")
    N, T, restarts = positive_int("N", N), positive_int("T", T), positive_int("restarts", restarts)
    budget = DEFAULT_BUDGET if budget is None else positive_int("budget", budget)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}), got {seed!r}")
    if not finite_number("dt", dt) > 0:
        raise ValueError(f"dt must be a positive time step, got dt={dt!r}")
    if not isinstance(decay, bool):
        raise TypeError(f"decay must be True or False, got {decay!r}")
    tgt = get_target(target, domain)
    x = tgt.samples(samples)
    layout = _layout(kind, tgt, N, T, dt, decay)
    y = tgt.evaluate(x)
    stride = max(1, samples // SEARCH_SAMPLES)
    xs, ys = x[::stride], y[::stride]
    xs32 = xs.to(torch.float32)  # the search simulates in float32; the final solve in float64
    search = _Search(layout, xs32, ys, budget, f"fit {kind} {tgt.name} N={layout.N} T={T}", progress)
    best_theta = search.run(seed, restarts)
    coef, _ = solve_linear(layout.features(torch.as_tensor(best_theta)[None], x), y)
    return _to_fitted(layout, best_theta, coef[0], tgt, seed, samples, search.used)
