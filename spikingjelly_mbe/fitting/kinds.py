"""The neuron kinds of the fitted library, one table: :data:`KINDS` maps each public name (``'mbe'``,
``'fs'``: in APIs, JSON files and configs) to a :class:`NeuronKind`, which knows the kind's node
class, its parameters in a JSON file and how a fit searches them. A new kind is its node class
(``neurons/``) and one entry here.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..neurons import FSNode, MBENode, MultiBasisNode
from .checks import FittedNeuronError, check_positive, check_vector

if TYPE_CHECKING:  # the fitting routine imports this table, not the reverse
    from .routine import Layout, _Search

LN2 = math.log(2.0)
Tables = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class NeuronKind:
    """One kind of fitted neuron. A fit searches a flat vector ``theta`` (:meth:`dim` entries, from
    :meth:`initial_point`) that :meth:`tables` maps onto per-basis input gain and offset and
    per-step threshold, reset and intensity tables; the output weights then come from least squares
    over the spikes (:attr:`spike_features`) or the basis outputs. :meth:`params` stores the result
    as JSON fields, :meth:`check_params` validates them on load and :meth:`node` builds the neuron.
    """

    name: str = ""
    node_class: type = MultiBasisNode
    single_basis: bool = False  # one basis whatever N: N is neither searched nor part of the key
    # The revision of the kind's search, written into each fit (fit['revision'], 1 when absent); a
    # cached fit of another revision is refitted, so fits on first use agree across machines.
    search_revision: int = 1
    spike_features: bool = False  # least squares over per-step spikes s[t] (True) or per-basis outputs o_n[T]

    def bases(self, N: int) -> int:
        """The number of bases of a fit asked for with ``N``."""
        return 1 if self.single_basis else N

    def check_params(self, params: Dict[str, Any], N: int, T: int, where: str) -> None:
        """Validate the kind's own entries of ``params`` (``gain``, ``offset``, ``bias`` are checked
        by :class:`~spikingjelly_mbe.fitting.FittedNeuron`); raise :class:`FittedNeuronError`."""
        raise NotImplementedError

    def node(self, params: Dict[str, Any], N: int, T: int, domain: Optional[Tuple[float, float]],
             step_mode: str) -> MultiBasisNode:
        """The SpikingJelly neuron of these (validated) parameters."""
        raise NotImplementedError

    def dim(self, layout: "Layout") -> int:
        """Entries of the search vector."""
        raise NotImplementedError

    def initial_point(self, layout: "Layout") -> np.ndarray:
        """Where the search starts (the binary expansion of the domain, for the kinds here)."""
        raise NotImplementedError

    def tables(self, layout: "Layout", theta: torch.Tensor, bases: Optional[Sequence[int]] = None) -> Tables:
        """``theta [P, dim] -> gain, offset [P, N]; vth, reset, intensity [P, N, T]``; with ``bases``,
        ``theta`` holds just those bases' parameters, in that order."""
        raise NotImplementedError

    def params(self, layout: "Layout", theta: torch.Tensor, tables: Tables, coef: torch.Tensor) -> Dict[str, Any]:
        """The kind's JSON entries for search point ``theta [1, dim]``, its ``tables`` (one candidate)
        and least-squares ``coef`` (one per feature, then the bias)."""
        raise NotImplementedError

    def layouts(self, layout: "Layout") -> List["Layout"]:
        """The starting layouts ``fit_neuron(multistart=True)`` searches from, ``layout`` (the
        default) first; by default just that one."""
        return [layout]

    def search(self, search: "_Search", seed: int, restarts: int) -> None:
        """Spend ``search.budget``: by default ``restarts`` seeded CMA-ES runs, the first from the
        initial point, the others from Gaussian perturbations of it."""
        rng = np.random.default_rng(seed)
        x0 = search.layout.initial_point()
        for r in range(max(1, restarts)):
            start = x0 if r == 0 else x0 + rng.normal(0.0, 0.3, size=x0.shape)
            search.cma(start, 0.3, seed * 1000 + r + 1, search.budget // max(1, restarts), search.score)


class MBEKind(NeuronKind):
    """Multi-basis Exponential Decay (Eqs. 4-8). Per basis: a log gain with a fixed sign, an offset
    and (with decay) three log time constants; output weights ``w_n`` by least squares."""

    name, node_class = "mbe", MBENode

    def check_params(self, params: Dict[str, Any], N: int, T: int, where: str) -> None:
        check_vector(params, "weight", N, where)
        for key in ("alpha", "dt"):
            check_positive(params, key, where)
        if not isinstance(params.get("decay"), bool):
            raise FittedNeuronError(f"{where}: params.decay must be true or false")
        for key in ("tau_v", "tau_r", "tau_d"):
            if (params["decay"] or key in params) and any(t <= 0 for t in check_vector(params, key, N, where)):
                raise FittedNeuronError(f"{where}: params.{key} must be positive")

    def node(self, params: Dict[str, Any], N: int, T: int, domain: Optional[Tuple[float, float]],
             step_mode: str) -> MultiBasisNode:
        p = params
        taus = [p.get(k, [1.0] * N) for k in ("tau_v", "tau_r", "tau_d")]
        return MBENode(*taus, weight=p["weight"], T=T, alpha=p["alpha"], dt=p["dt"], gain=p["gain"],
                       offset=p["offset"], bias=p["bias"], decay=p["decay"], domain=domain, step_mode=step_mode)

    @staticmethod
    def per_basis(layout: "Layout") -> int:
        return 5 if layout.decay else 2

    def dim(self, layout: "Layout") -> int:
        return layout.N * self.per_basis(layout)

    @staticmethod
    def signs(layout: "Layout") -> torch.Tensor:
        """``layout.signs`` if set; else basis 0 fires above its offset, then signs alternate so
        negative lobes are covered."""
        if layout.signs is not None:
            return torch.tensor(layout.signs, dtype=torch.float64)
        return torch.tensor([1.0 if n % 2 == 0 else -1.0 for n in range(layout.N)], dtype=torch.float64)

    def layouts(self, layout: "Layout") -> List["Layout"]:
        """The default layout, then every sign pattern of bases 1-3 (later bases alternate as by
        default; one basis: either sign) with the nested intervals at 1/2, 1 and 2 times their
        default width: 24 layouts for ``N >= 4``."""
        default = self.signs(layout).tolist()
        if layout.N == 1:
            return [layout, replace(layout, signs=(-default[0],))]
        out = []
        for pattern in itertools.product((1.0, -1.0), repeat=min(layout.N, 4) - 1):
            signs = (1.0, *pattern, *default[len(pattern) + 1:])
            for widen in (1.0, 0.5, 2.0):
                if tuple(signs) != tuple(default) or widen != 1.0:
                    out.append(replace(layout, signs=signs, widen=widen))
        return [layout] + out

    @staticmethod
    def ranges(layout: "Layout") -> List[Tuple[float, float]]:
        """Initial input interval of each basis: the whole domain, then nested intervals of the
        critical region (``layout.widen`` times two spreads of the curvature on either side of its
        centre), halving every second basis."""
        out = [(layout.lo, layout.hi)]
        for n in range(1, layout.N):
            half = layout.widen * 2.0 * layout.scale / 2.0 ** ((n - 1) // 2)
            out.append((max(layout.lo, layout.center - half), min(layout.hi, layout.center + half)))
        return out

    def initial_point(self, layout: "Layout") -> np.ndarray:
        """Binary expansion: each basis maps its interval onto ``[0, 2 alpha)`` with thresholds,
        resets and intensities halving every step (``tau = dt / ln 2``)."""
        log_tau = math.log(layout.dt / LN2)
        rows = []
        for (a, b), sign in zip(self.ranges(layout), self.signs(layout).tolist()):
            gain = 2.0 * layout.scale / (b - a)  # in units of alpha per unit z
            start = (a if sign > 0 else b) - layout.center
            row = [math.log(gain), -sign * gain * start / layout.scale]
            rows.append(row + ([log_tau] * 3 if layout.decay else []))
        return np.asarray(rows, dtype=np.float64).ravel()

    def tables(self, layout: "Layout", theta: torch.Tensor, bases: Optional[Sequence[int]] = None) -> Tables:
        P = theta.shape[0]
        t = torch.arange(layout.T, dtype=theta.dtype)
        signs = self.signs(layout).to(theta.dtype)
        if bases is not None:
            signs = signs[list(bases)]
        p = theta.view(P, signs.numel(), -1)
        gain = layout.alpha * signs * torch.exp(p[..., 0]) / layout.scale
        offset = layout.alpha * p[..., 1] - gain * layout.center
        if layout.decay:
            tau = torch.exp(p[..., 2:5])  # [P, N, 3]
            tables = layout.alpha * torch.exp(-layout.dt / tau[..., None]) ** t  # Eq. 4: [P, N, 3, T]
            vth, reset, intensity = tables.unbind(2)
        else:
            vth = reset = intensity = torch.full((P, signs.numel(), layout.T), layout.alpha, dtype=theta.dtype)
        return gain, offset, vth, reset, intensity

    def params(self, layout: "Layout", theta: torch.Tensor, tables: Tables, coef: torch.Tensor) -> Dict[str, Any]:
        params = {"weight": coef[:-1].tolist(), "alpha": layout.alpha, "dt": layout.dt, "decay": layout.decay}
        if layout.decay:
            tau = torch.exp(theta.view(layout.N, -1)[:, 2:5])
            params.update(tau_v=tau[:, 0].tolist(), tau_r=tau[:, 1].tolist(), tau_d=tau[:, 2].tolist())
        return params

    def search(self, search: "_Search", seed: int, restarts: int) -> None:
        """One basis: the default restarts. Several: a joint CMA-ES run from the binary-expansion
        point, block-coordinate sweeps (:meth:`blockwise`), then a joint polish."""
        lay = search.layout
        if lay.N == 1:
            super().search(search, seed, restarts)
            return
        third = search.budget // 3
        search.cma(lay.initial_point(), 0.3, seed * 1000 + 1, third, search.score)
        self.blockwise(search, seed * 1000 + 2, third)
        search.cma(search.best_theta, 0.1, seed * 1000 + 3, search.budget - search.used, search.score)

    def blockwise(self, search: "_Search", seed: int, evals: int) -> None:
        """Optimise one basis at a time with the others' outputs fixed (cached)."""
        lay = search.layout
        per = self.per_basis(lay)
        for n in list(range(lay.N)) * 2:
            theta = search.best_theta.copy()
            fixed = lay.features(torch.as_tensor(theta[None], dtype=torch.float32), search.xs)[0]

            def objective(block: np.ndarray, n: int = n, theta: np.ndarray = theta, fixed: torch.Tensor = fixed):
                col = lay.features(torch.as_tensor(block, dtype=torch.float32), search.xs, bases=[n])[..., 0]
                feats = fixed.expand(len(block), -1, -1).clone()
                feats[..., n] = col
                full = np.repeat(theta[None], len(block), 0)
                full[:, n * per:(n + 1) * per] = block
                return search.losses(feats, full)

            search.cma(theta[n * per:(n + 1) * per], 0.3, seed + n, evals // (2 * lay.N), objective)


class FSKind(NeuronKind):
    """Few-Spikes (Eqs. 1-3): one basis with free, signed per-step thresholds and resets (in units
    of the domain's binary expansion) and an input offset; intensities ``d[t]`` by least squares."""

    name, node_class, single_basis, spike_features = "fs", FSNode, True, True
    search_revision = 2  # 2: indicator-step starts (:meth:`starts`)

    def check_params(self, params: Dict[str, Any], N: int, T: int, where: str) -> None:
        for key in ("vth", "reset", "intensity"):
            check_vector(params, key, T, where)

    def node(self, params: Dict[str, Any], N: int, T: int, domain: Optional[Tuple[float, float]],
             step_mode: str) -> MultiBasisNode:
        p = params
        return FSNode(p["vth"], p["reset"], p["intensity"], offset=p["offset"][0], bias=p["bias"],
                      domain=domain, step_mode=step_mode)

    def dim(self, layout: "Layout") -> int:
        return 2 * layout.T + 1

    @staticmethod
    def point(layout: "Layout", a: float, b: float, knots: Sequence[float] = ()) -> np.ndarray:
        """Search vector of ``m = len(knots)`` indicator steps followed by the binary expansion of
        ``[a, b]`` in the remaining ``T - m`` steps: ``u[0] = x - a``; step ``t < m`` fires for
        ``x >= knots[t]`` and resets nothing (``Vth[t] = knots[t] - a``, ``r[t] = 0``), so its
        intensity adds a free step to the output there; then ``Vth[t] = r[t] = (b - a) 2^-(t-m+1)``
        (see :meth:`tables`). With no knots: the plain binary expansion of ``[a, b]``."""
        T, m = layout.T, len(knots)
        halfwidth = (layout.hi - layout.lo) / 2
        binary = halfwidth * 2.0 ** -np.arange(T)
        vth, reset = np.zeros(T), np.zeros(T)
        vth[:m] = np.asarray(knots, dtype=np.float64) - a
        vth[m:] = reset[m:] = (b - a) * 2.0 ** -(np.arange(T - m) + 1.0)
        return np.concatenate([[(layout.lo - a) / halfwidth], vth / binary, reset / binary])

    @staticmethod
    def knots(search: "_Search", m: int) -> np.ndarray:
        """``m`` input points spread like the target's curvature ``|f''|`` over the search samples
        (its quantiles ``(k + 1/2) / m``): where an indicator step's jump does the most good."""
        xs, ys = search.xs.to(torch.float64), search.ys
        curvature = (ys[2:] - 2 * ys[1:-1] + ys[:-2]).abs()
        if m == 0 or not float(curvature.sum()) > 0:
            return np.zeros(0)
        cdf = (torch.cumsum(curvature, 0) / curvature.sum()).numpy()
        at = np.searchsorted(cdf, (np.arange(m) + 0.5) / m)
        return xs[1:-1].numpy()[np.minimum(at, len(cdf) - 1)]

    def initial_point(self, layout: "Layout") -> np.ndarray:
        return self.point(layout, layout.lo, layout.hi)

    def tables(self, layout: "Layout", theta: torch.Tensor, bases: Optional[Sequence[int]] = None) -> Tables:
        P = theta.shape[0]
        t = torch.arange(layout.T, dtype=theta.dtype)
        halfwidth = (layout.hi - layout.lo) / 2
        binary = halfwidth * 2.0 ** (-t)
        vth = binary * theta[:, 1:1 + layout.T]
        reset = binary * theta[:, 1 + layout.T:]
        gain = torch.ones(P, 1, dtype=theta.dtype)
        offset = -layout.lo + halfwidth * theta[:, :1]
        return gain, offset, vth[:, None], reset[:, None], torch.ones_like(vth)[:, None]

    def params(self, layout: "Layout", theta: torch.Tensor, tables: Tables, coef: torch.Tensor) -> Dict[str, Any]:
        _, _, vth, reset, _ = tables
        return {"vth": vth[0].tolist(), "reset": reset[0].tolist(), "intensity": coef[:-1].tolist()}

    def search(self, search: "_Search", seed: int, restarts: int) -> None:
        """From the best starts (:meth:`starts`), CMA-ES in units of each start's scale (signs
        free), coordinate sweeps (:meth:`sweep`), then a polish."""
        lay = search.layout
        starts = self.starts(search, max(1, restarts))
        share = (search.budget - search.used) // (2 * len(starts))
        for r, start in enumerate(starts):
            scale = self.unit(start)
            search.cma(np.ones_like(start), 0.1, seed * 1000 + r + 1, share,
                       lambda phis, scale=scale, start=start: search.score(
                           np.asarray(phis) * scale + np.concatenate([[start[0] - 1.0], np.zeros(2 * lay.T)])))
        self.sweep(search, (search.budget - search.used) // 2)
        best = search.best_theta.copy()
        scale = self.unit(best)
        search.cma(np.ones_like(best), 0.1, seed * 1000 + 99, search.budget - search.used,
                   lambda phis: search.score(np.asarray(phis) * scale + np.concatenate([[best[0] - 1.0],
                                                                                        np.zeros(2 * lay.T)])))

    @staticmethod
    def unit(theta: np.ndarray) -> np.ndarray:
        """Per-entry search units around ``theta``: 1 for the offset, each threshold's and reset's
        own size, at least 1e-3 of the largest (so a zero reset can move)."""
        tiny = 1e-3 * float(np.abs(theta[1:]).max())
        return np.concatenate([[1.0], np.where(np.abs(theta[1:]) < tiny, tiny, theta[1:])])

    def starts(self, search: "_Search", count: int) -> List[np.ndarray]:
        """The ``count`` best of these starts, each scored like any candidate: the binary expansions
        of sub-intervals ``[a, b]`` of the domain (ends on a grid of 17 points: where the spikes'
        resolution goes), and for ``m = 1 .. T-1`` indicator steps at the curvature's ``m``
        quantiles (:meth:`knots`) followed by a binary expansion (ends on a grid of 9 points):
        a staircase where the target bends on top of a fine linear code (:meth:`point`)."""
        lay = search.layout
        points = []
        for m in range(lay.T):
            knots = self.knots(search, m)
            ends = np.linspace(lay.lo, lay.hi, 9 if m else 17)
            points += [self.point(lay, a, b, knots) for i, a in enumerate(ends) for b in ends[i + 1:]]
        points = np.stack(points)
        losses = search.score(points)
        return [points[i] for i in np.argsort(losses, kind="stable")[:count]]

    @staticmethod
    def sweep(search: "_Search", evals: int) -> None:
        """Coordinate sweeps over the thresholds and resets: each in turn is set to the best of a
        grid of signed values (``-2 .. 2`` times its step's binary threshold, and signed powers of
        two), the others fixed: moves CMA-ES's local steps cannot make."""
        lay = search.layout
        powers = 2.0 ** -np.arange(2, 2 * lay.T, 1.0)
        grid = np.concatenate([np.linspace(-2.0, 2.0, 33), powers, -powers])
        while evals >= len(grid):
            for i in range(1, lay.dim):
                if search.used + len(grid) > search.budget or evals < len(grid):
                    return
                candidates = np.repeat(search.best_theta[None], len(grid), 0)
                candidates[:, i] = grid
                search.score(candidates)
                evals -= len(grid)


KINDS: Dict[str, NeuronKind] = {kind.name: kind for kind in (MBEKind(), FSKind())}


def get_kind(kind: Any, argument: str = "kind") -> NeuronKind:
    """The registered :class:`NeuronKind` of a name (or the kind itself); a ``ValueError`` naming
    ``argument`` and the registered kinds otherwise."""
    if isinstance(kind, NeuronKind):
        return kind
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"{argument} must be one of {sorted(KINDS)} (the registered neuron kinds, "
                         f"spikingjelly_mbe.fitting.kinds.KINDS), got {kind!r}")
    return KINDS[kind]
