"""Betti numbers and Betti curves of Vietoris-Rips complexes with Euclidean distance (METHOD
section 7; paper sections 4.1-4.2).

beta_d(eps) is the number of d-dimensional persistence bars with birth <= eps < death.

* beta_0 needs no homology library: the H0 bars of a Vietoris-Rips filtration die exactly at the edge
  lengths of a minimum spanning tree, so beta_0(eps) = n - #{MST edges of length <= eps}. We build the
  MST with Prim's algorithm over a distance matrix computed by one BLAS matrix product (torch) on the
  centred points (distances are translation invariant; far from the origin the product's terms would
  cancel), then recompute the n - 1 tree edge lengths exactly in float64. The product runs in
  float32 when its rounding error provably cannot move any tree edge length by more than a relative
  ``MST_RTOL``, else again in float64 (see :func:`mst_edges`). The product may run on a GPU
  (``device``); the O(n^2) Prim walk and the exact lengths stay on the host, one transfer per cloud.
* beta_1 and higher come from ripser.py (persistent homology, MIT licence), cut off at the largest eps
  asked for, on a seeded subsample for large clouds.
* ``suggest_eps`` picks eps from the data itself: a quantile of the MST edge lengths.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from koopmanlens.checks import as_matrix
from koopmanlens.errors import InputError

#: Largest distance matrix (bytes) built without being asked; see ``max_bytes`` arguments.
DEFAULT_MAX_BYTES = int(os.environ.get("KOOPMANLENS_TOPOLOGY_MAX_BYTES", 4 * 1024**3))
#: Largest relative error of an MST edge length that the float32 distance matrix may cause before
#: :func:`mst_edges` recomputes the tree on a float64 one.
MST_RTOL = 1e-3


def _check_memory(n: int, bytes_per: int, max_bytes: int | None) -> None:
    need = n * n * bytes_per
    limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    if need > limit:
        keep = int((limit / bytes_per) ** 0.5)
        raise InputError(
            f"{n} points need a {need / 1024**3:.1f} GiB distance matrix, over the "
            f"{limit / 1024**3:.1f} GiB limit; subsample to at most {keep} points (e.g. "
            f"points[torch.randperm(n, generator=g)[:{keep}]]) or raise max_bytes"
        )


def pairwise_sq_distances(points: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between rows as |a|^2 + |b|^2 - 2 a.b (one BLAS product).

    The identity cancels when the points lie far from the origin compared with their spread: centre
    them first (as :func:`mst_edges` does)."""
    sq = points.pow(2).sum(1)
    d = torch.addmm(sq[:, None] + sq[None, :], points, points.T, alpha=-2.0)
    return d.clamp_min_(0.0)


def _prim(d2: torch.Tensor) -> np.ndarray:
    """Edges (n - 1, 2) of a minimum spanning tree of the complete graph with weights ``d2``."""
    n = d2.shape[0]
    best = d2[0].clone()
    parent = torch.zeros(n, dtype=torch.long)
    in_tree = torch.zeros(n, dtype=torch.bool)
    in_tree[0] = True
    best[0] = float("inf")
    edges = np.empty((n - 1, 2), dtype=np.int64)
    for e in range(n - 1):
        v = int(torch.argmin(best))
        edges[e] = (int(parent[v]), v)
        in_tree[v] = True
        best[v] = float("inf")
        row = d2[v]
        closer = (row < best) & ~in_tree
        best = torch.where(closer, row, best)
        parent = torch.where(closer, v, parent)
    return edges


def _fp32_products_exact() -> bool:
    """Whether float32 matrix products round as IEEE float32, as the error bound of
    :func:`_gram_error_bound` assumes: not when the user allowed TF32 or bf16 products
    (``torch.set_float32_matmul_precision("high")`` or ``"medium"``)."""
    return torch.get_float32_matmul_precision() == "highest"


def _distances_on(centred: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`pairwise_sq_distances` of ``centred`` in ``dtype``, computed on ``device``, on the host."""
    return pairwise_sq_distances(centred.to(device=device, dtype=dtype)).cpu()


def _gram_error_bound(centred: torch.Tensor) -> float:
    """A bound on the absolute error of every float32 entry of ``pairwise_sq_distances``: each is
    |a|^2 + |b|^2 - 2 a.b with terms up to 2 R^2 (R the largest norm), summed over d coordinates;
    we take 4 sqrt(d) u R^2 per term (the probabilistic rounding-error bound of Higham and Mary
    2019, with a margin), u = 2^-24, plus the rounding of the coordinates to float32."""
    d = centred.shape[1]
    r2 = float(centred.pow(2).sum(1).max())  # float32 is enough for a bound
    u = float(torch.finfo(torch.float32).eps) / 2
    return 4 * 4 * (d**0.5 + 2) * u * r2


def mst_edges(
    points: torch.Tensor | np.ndarray,
    max_bytes: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimum spanning tree of the complete Euclidean graph (Prim's algorithm, O(n^2)).

    The tree is found on squared distances of the centred points (float64 centring), by one float32
    BLAS product. If those distances are off by at most delta, every sorted tree length squared is
    within 2 delta of the exact MST's; when ``delta`` (:func:`_gram_error_bound`) could move the
    shortest tree edge by more than a relative :data:`MST_RTOL` (tight clusters far apart, duplicate
    points), the tree is found again on float64 distances (twice the memory, about 3x the time).

    ``device``: where the distance product runs (default: where ``points`` live); the matrix comes
    back to the host once for Prim's walk. With TF32 or bf16 float32 products allowed
    (``torch.set_float32_matmul_precision``) the float32 bound does not hold, so the product is made
    in float64.

    Returns:
        (edges (n - 1, 2) int64, lengths (n - 1,) float64 sorted ascending). Lengths are exact
        float64 distances between the joined points.
    """
    pts = as_matrix(points, "points", dtype=None, min_rows=2)
    dev = pts.device if device is None else torch.device(device)
    pts = pts.cpu()
    n = pts.shape[0]
    _check_memory(n, 4, max_bytes)
    # any common shift leaves distances alone, so the mean may be rounded to the points' dtype;
    # the subtraction is then exact to a unit round-off of the centred coordinates
    centred = pts - pts.mean(0, dtype=torch.float64).to(pts.dtype)
    c32 = centred.float()
    lengths = None
    if _fp32_products_exact():
        edges = _prim(_distances_on(c32, dev, torch.float32))
        lengths = _edge_lengths(pts, edges)
    if lengths is None or 2 * _gram_error_bound(c32) > MST_RTOL * float(lengths.min()) ** 2:
        _check_memory(n, 8, max_bytes)
        edges = _prim(_distances_on(centred, dev, torch.float64))
        lengths = _edge_lengths(pts, edges)
    order = np.argsort(lengths, kind="stable")
    return edges[order], lengths[order]


def _edge_lengths(pts: torch.Tensor, edges: np.ndarray) -> np.ndarray:
    """Exact float64 lengths of ``edges`` between rows of ``pts``."""
    a, b = torch.from_numpy(edges[:, 0]), torch.from_numpy(edges[:, 1])
    return torch.linalg.vector_norm(pts[a].double() - pts[b].double(), dim=1).numpy()


def betti0_from_mst(lengths: np.ndarray, n: int, eps: float | np.ndarray) -> np.ndarray:
    """beta_0(eps) = n - #{MST edges with length <= eps}, for one eps or an array of them."""
    return n - np.searchsorted(np.sort(lengths), np.asarray(eps, dtype=np.float64), side="right")


def _check_eps(eps: float | Sequence[float]) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    if arr.size == 0:
        raise InputError("give at least one eps")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise InputError(f"eps must be finite and non-negative, got {arr.tolist()[:5]}")
    return arr


def _subsample(pts: torch.Tensor, max_points: int | None, seed: int) -> torch.Tensor:
    if max_points is None or pts.shape[0] <= max_points:
        return pts
    g = torch.Generator().manual_seed(seed)
    return pts[torch.randperm(pts.shape[0], generator=g)[:max_points]]


def persistence_diagrams(
    points: torch.Tensor | np.ndarray,
    maxdim: int = 1,
    thresh: float = float("inf"),
    max_points: int | None = 2000,
    seed: int = 0,
) -> list[np.ndarray]:
    """Vietoris-Rips persistence diagrams H0..H_maxdim from ripser.py, edges up to ``thresh``, on a
    seeded subsample of at most ``max_points`` points. Bars alive at ``thresh`` have death inf."""
    from ripser import ripser

    pts = _subsample(as_matrix(points, "points", dtype=None, min_rows=2), max_points, seed)
    if maxdim < 0:
        raise InputError(f"maxdim must be >= 0, got {maxdim}")
    if maxdim >= pts.shape[0] - 1:
        raise InputError(f"maxdim {maxdim} is too large for {pts.shape[0]} points (need maxdim < n - 1)")
    return ripser(pts.double().cpu().numpy(), maxdim=maxdim, thresh=float(thresh))["dgms"]


def count_bars(diagram: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Number of bars with birth <= eps < death, for each eps."""
    if len(diagram) == 0:
        return np.zeros(len(eps), dtype=np.int64)
    b, d = diagram[:, 0][None, :], diagram[:, 1][None, :]
    e = eps[:, None]
    return ((b <= e) & (e < d)).sum(1)


def betti_curve(
    points: torch.Tensor | np.ndarray,
    eps_grid: Sequence[float] | np.ndarray,
    maxdim: int = 1,
    max_points: int | None = 2000,
    seed: int = 0,
    max_bytes: int | None = None,
) -> np.ndarray:
    """Betti curves beta_0..beta_maxdim over ``eps_grid``: int array of shape (maxdim + 1, len(grid)).

    beta_0 is exact on all points (MST); beta_d >= 1 come from ripser on a seeded subsample of at most
    ``max_points`` points (``None``: all points).
    """
    pts = as_matrix(points, "points", dtype=None, min_rows=2)
    grid = _check_eps(eps_grid)
    if maxdim < 0:
        raise InputError(f"maxdim must be >= 0, got {maxdim}")
    if maxdim >= pts.shape[0] - 1:
        raise InputError(f"maxdim {maxdim} is too large for {pts.shape[0]} points (need maxdim < n - 1)")
    out = np.zeros((maxdim + 1, len(grid)), dtype=np.int64)
    _, lengths = mst_edges(pts, max_bytes)
    out[0] = betti0_from_mst(lengths, pts.shape[0], grid)
    if maxdim >= 1:
        sub = _subsample(pts, max_points, seed)
        _check_memory(sub.shape[0], 8, max_bytes)
        dgms = persistence_diagrams(sub, maxdim, thresh=float(grid.max()), max_points=None)
        for d in range(1, maxdim + 1):
            out[d] = count_bars(dgms[d], grid)
    return out


def betti_numbers(
    points: torch.Tensor | np.ndarray,
    eps: float,
    maxdim: int = 1,
    max_points: int | None = 2000,
    seed: int = 0,
    max_bytes: int | None = None,
) -> list[int]:
    """[beta_0, ..., beta_maxdim] of the Vietoris-Rips complex at scale ``eps``."""
    eps_arr = _check_eps(eps)
    if eps_arr.size != 1:
        raise InputError("betti_numbers takes one eps; use betti_curve for several")
    return betti_curve(points, eps_arr, maxdim, max_points, seed, max_bytes)[:, 0].tolist()


def betti0(points: torch.Tensor | np.ndarray, eps: float, max_bytes: int | None = None) -> int:
    """beta_0 at one eps, exactly, on all points (MST only, no homology library)."""
    eps_arr = _check_eps(eps)
    pts = as_matrix(points, "points", dtype=None, min_rows=2)
    _, lengths = mst_edges(pts, max_bytes)
    return int(betti0_from_mst(lengths, pts.shape[0], eps_arr)[0])


def suggest_eps(
    points: torch.Tensor | np.ndarray, quantile: float = 0.5, max_bytes: int | None = None
) -> float:
    """An eps read off the data: the ``quantile`` of the minimum-spanning-tree edge lengths.

    At that eps the fraction ``quantile`` of the tree's merges have happened, so beta_0 is about
    (1 - quantile) n on this cloud: a scale between "every point alone" and "one component" that
    does not depend on the units of the representation. Apply one eps to a whole sequence of
    representations that live on a common scale (e.g. preprocessed, aligned layers).
    """
    if not 0.0 <= quantile <= 1.0:
        raise InputError(f"quantile must be in [0, 1], got {quantile}")
    _, lengths = mst_edges(points, max_bytes)
    return float(np.quantile(lengths, quantile))


def suggest_eps_grid(
    points: torch.Tensor | np.ndarray,
    n: int = 50,
    quantile: float = 0.5,
    max_points: int = 2000,
    seed: int = 0,
    max_bytes: int | None = None,
) -> np.ndarray:
    """An eps grid for Betti curves read off the data: ``n`` values from 0 to the larger of the
    longest MST edge (where beta_0 reaches 1) and the ``quantile`` of pairwise distances (on a seeded
    subsample of ``max_points``), so that loops, which close later than components merge, are seen."""
    if n < 2:
        raise InputError("an eps grid needs at least 2 points")
    pts = as_matrix(points, "points", dtype=None, min_rows=2)
    _, lengths = mst_edges(pts, max_bytes)
    sub = _subsample(pts, max_points, seed).double()
    d = torch.pdist(sub).numpy()
    top = max(float(lengths[-1]), float(np.quantile(d, quantile)) if d.size else 0.0)
    return np.linspace(0.0, top, n)


def curve_distance(a: np.ndarray, b: np.ndarray, eps_grid: np.ndarray | None = None) -> float:
    """Distance between two Betti curves on one grid: the mean absolute difference (the L1 area
    between them divided by the grid's span when ``eps_grid`` is uniform)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"curves of shapes {a.shape} and {b.shape} cannot be compared")
    return float(np.abs(a - b).mean())


def _pooled_lengths(mst_lengths: Sequence[np.ndarray]) -> np.ndarray:
    arrays = [np.asarray(a, dtype=np.float64).ravel() for a in mst_lengths]
    if not arrays or any(a.size == 0 for a in arrays):
        raise InputError("give the MST edge lengths of at least one cloud, each with >= 1 edge")
    pooled = np.concatenate(arrays)
    if not np.isfinite(pooled).all() or (pooled < 0).any():
        raise InputError("MST edge lengths must be finite and non-negative")
    return pooled


def pooled_eps_grid(mst_lengths: Sequence[np.ndarray], n: int = 65) -> np.ndarray:
    """One eps grid for a set of clouds, read off all of them alike: the quantiles at levels
    0, 1/(n-1), ..., 1 of their MST edge lengths pooled (each cloud's ``mst_edges`` lengths).

    Why this rule: (a) it is symmetric in the clouds (a pooled multiset), so no cloud (e.g. the first
    layer) sets the scale and reordering the clouds leaves it unchanged; (b) it runs from the
    shortest to the longest tree edge of any cloud, so every cloud's beta_0 curve falls from near n
    to exactly 1 inside the grid; (c) its points are dense where merges happen, so one long edge (an
    outlier, or the gap between collapsed classes) cannot squeeze every other cloud's merges into the
    first grid step as a uniform grid from 0 would. The mean absolute difference of two curves on
    this grid (:func:`curve_distance`) weighs each scale by the pooled density of merges.
    Clouds of equal size weigh equally.
    """
    if n < 2:
        raise InputError("an eps grid needs at least 2 points")
    return np.quantile(_pooled_lengths(mst_lengths), np.linspace(0.0, 1.0, n))


def pooled_eps(mst_lengths: Sequence[np.ndarray], quantile: float = 0.5) -> float:
    """One eps for a set of clouds: the ``quantile`` of their MST edge lengths pooled (see
    :func:`pooled_eps_grid`; the median is the middle point of an odd grid). Unlike
    :func:`suggest_eps` on one cloud, no cloud's beta_0 is fixed to (1 - quantile) n by construction."""
    if not 0.0 <= quantile <= 1.0:
        raise InputError(f"quantile must be in [0, 1], got {quantile}")
    return float(np.quantile(_pooled_lengths(mst_lengths), quantile))
