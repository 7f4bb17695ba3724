"""Class unlearning by a closed-form edit of the Koopman operator (paper section 4.3, Appendix D;
METHOD section 8).

Column convention everywhere in this module: a matrix W maps a key column k to a value column
v = W k. Keys are stacked as columns, K_E (d x B), values V_E (d_out x B), preserved keys K_0 (d x N).
For the Koopman operator W = exp(G) (p x p) and keys are observables phi(x_i).

Methods (all float64 inside, solves instead of inverses; the closed-form solvers live in
:mod:`koopmanlens.edit_solvers` and are re-exported here):

* ``emmet``: EMMET (Gupta et al. 2024), equality-constrained: the edit keys map exactly to their
  values (when feasible) while W changes least on the preserved keys.
* ``memit``: least squares that trades memorisation against preservation,
  W' = W + R K_E^T (lambda C_0 + K_E K_E^T)^-1 with R = V_E - W K_E.
* ``alphaedit``: AlphaEdit (Fang et al., ICLR 2025): the least-squares update projected onto the
  null space of the preserved keys' second moment, so those keys' outputs do not change.
* key reduction (``reduce_keys``): k-means centroids (or a sample) of a class's keys, which makes
  EMMET's system well posed when a class has more keys than dimensions.

``unlearn_class`` runs Algorithm 1 on a :class:`~koopmanlens.surrogate.Surrogate` and returns an
:class:`Edit` that applies, reverts exactly, saves and loads.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from koopmanlens.data import Dataset
from koopmanlens.edit_record import Edit
from koopmanlens.edit_solvers import (
    KeyStats,
    alphaedit,
    emmet,
    memit,
    nullspace_projector,
    preservation_covariance,
    reduce_keys,
)
from koopmanlens.errors import IllConditionedWarning, InputError
from koopmanlens.operators import MatrixOperator
from koopmanlens.states import SpanStates, states_of
from koopmanlens.surrogate import Surrogate
from koopmanlens.training import device_for

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "METHOD_RIDGES",
    "Edit",
    "KeyStats",
    "alphaedit",
    "class_observables",
    "default_n_keys",
    "emmet",
    "evaluate_edit",
    "memit",
    "nearest_class",
    "nullspace_projector",
    "preservation_covariance",
    "reduce_keys",
    "unlearn_class",
]

METHODS = ("emmet-kmeans", "memit", "emmet", "alphaedit")
#: ``lam`` of ``"alphaedit"`` when ``unlearn_class`` is given ``lam="auto"``: a tiny ridge on the update.
ALPHAEDIT_LAM = 1e-6
DEFAULT_METHOD = "memit"


# ---------------------------------------------------------------------------- Algorithm 1
@torch.no_grad()
def class_observables(surrogate: Surrogate, data: Dataset, states: SpanStates | None = None) -> torch.Tensor:
    """phi(x_i) of every sample of ``data`` (rows); x_i from ``states`` (the run's one capture of the
    span, :class:`~koopmanlens.states.SpanStates`) when given."""
    layers = [surrogate.layer_i, surrogate.layer_j]
    x_i = states_of(states, surrogate.network, layers, data)[surrogate.layer_i]
    return surrogate.encode_i(x_i).double()


def nearest_class(centroids: torch.Tensor, forget: int, present: list[int]) -> int:
    """The class (other than ``forget``) whose centroid is nearest to ``forget``'s."""
    others = [c for c in present if c != forget]
    d = torch.linalg.norm(centroids[others] - centroids[forget], dim=1)
    return others[int(torch.argmin(d))]


#: Per-method defaults of the two ridges: ``lambda_norm`` (added to C_0) and ``lambda_emmet`` (added
#: to EMMET's D). ``"emmet"`` uses the authors' 0.1 and 0.1; ``"emmet-kmeans"`` keeps the constraints
#: exact (its few centroids keep D well posed); ``"memit"`` needs only a tiny ridge on C_0.
METHOD_RIDGES: dict[str, dict[str, float]] = {
    "memit": {"lambda_norm": 1e-6},
    "emmet-kmeans": {"lambda_norm": 1e-6, "lambda_emmet": 0.0},
    "emmet": {"lambda_norm": 0.1, "lambda_emmet": 0.1},
    "alphaedit": {},
}


def default_n_keys(observables: int, n_classes: int) -> int:
    """Default number of k-means key centroids for ``"emmet-kmeans"``: max(1, p // (2 C)).

    EMMET maps each centroid *exactly* to the new value, so it rewrites the operator on the
    m-dimensional span of the m centroids, and every preserved key with a component in that span
    moves towards ``into`` too. With m = p the span is the whole observable space and the edited
    operator has rank one: every input goes to ``into`` (the old default min(p, 32) did this on
    Yin-Yang, p = 32). Giving each of the C classes an equal share p / C of the observable
    dimensions, the forgotten class may use at most its own share; we take half of it, so the keys of
    the other classes keep most of their directions. Measured on Yin-Yang (p = 32, C = 3, so m = 5):
    the other classes stay within a point of before while the target falls from 94-96% to 8-20%;
    m = 16 took 5-15 points off the others, m = 32 sent them to 50%. MNIST (p = 800, C = 10): m = 40.
    """
    if observables < 1 or n_classes < 1:
        raise InputError(f"need observables >= 1 and n_classes >= 1, got {observables} and {n_classes}")
    return max(1, observables // (2 * max(n_classes, 2)))


def _check_edit_args(train: Dataset, forget: int, into: int | None, method: str, **numbers) -> list[int]:
    """The classes present in ``train``; :class:`InputError` for an unknown method or class, or a
    number out of its range."""
    if method not in METHODS:
        raise InputError(f"unknown edit method {method!r}; choose one of {list(METHODS)}")
    present = sorted(set(train.y.tolist()))
    if forget not in present:
        raise InputError(f"class {forget} does not occur in the training data (classes {present})")
    if into is not None and into not in present:
        raise InputError(f"class {into} does not occur in the training data (classes {present})")
    if into == forget:
        raise InputError("into must be a class other than the one to forget")
    if len(present) < 2:
        raise InputError(f"the training data holds only class {forget}: there is no class to send it to")
    mta = numbers["max_target_accuracy"]
    if not (isinstance(mta, (int, float)) and 0.0 <= mta <= 1.0):
        raise InputError(f"max_target_accuracy must be a fraction in [0, 1], got {mta!r}")
    for name in ("n_keys", "tune_samples"):
        v = numbers[name]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise InputError(f"{name} must be a whole number >= 1, got {v!r}")
    return present


def _class_centroids(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row c: the mean of ``out`` over the samples of class c (zeros for an absent class)."""
    n_classes = int(y.max()) + 1
    return torch.stack(
        [out[y == c].mean(0) if (y == c).any() else out.new_zeros(out.shape[1]) for c in range(n_classes)]
    )


def unlearn_class(
    surrogate: Surrogate,
    train: Dataset,
    forget: int,
    into: int | None = None,
    method: str = DEFAULT_METHOD,
    n_keys: int | None = None,
    lam: float | str = "auto",
    lambda_mom2: float = 1.0,
    lambda_norm: float | None = None,
    lambda_emmet: float | None = None,
    seed: int = 0,
    max_target_accuracy: float = 0.01,
    tune_samples: int = 500,
    observables: torch.Tensor | None = None,
    stats: KeyStats | None = None,
    device: str | torch.device | None = None,
) -> Edit:
    """Algorithm 1 (Appendix D): edit the operator so class ``forget`` is sent to another class.

    Keys are phi(x_i) of the training samples of ``forget`` (METHOD section 9: these work where
    K^-1 phi(x_j) does not); preserved keys are phi(x_i) of all other training samples; the new value
    for every key is the observable-space centroid, K phi(x_i) averaged, of class ``into`` (default:
    the class whose centroid is nearest to ``forget``'s).

    Methods: ``"memit"`` (least squares with all keys, ``lam`` trades preservation; ``lam="auto"``
    takes the largest lam on a log grid 10^-2..10^3 for which at most ``max_target_accuracy`` (a
    fraction in [0, 1]) of a seeded sample of ``tune_samples`` *training* samples of the class keep
    their label, so the test split is never looked at), ``"emmet-kmeans"`` (exact EMMET on
    ``n_keys`` k-means centroids of the keys, default :func:`default_n_keys`), ``"emmet"`` (EMMET
    with every key and the authors' ridges), ``"alphaedit"`` (:func:`alphaedit` with every key,
    ``lam`` its ridge, ``"auto"`` meaning :data:`ALPHAEDIT_LAM`; no lambda_norm or lambda_emmet).
    ``lambda_norm`` and ``lambda_emmet`` default per method (:data:`METHOD_RIDGES`). An
    ill-conditioned solve warns (:class:`~koopmanlens.errors.IllConditionedWarning`) and sets
    ``diagnostics["ill_conditioned"]``.
    ``observables``: phi(x_i) of ``train`` (rows), if already computed (:func:`class_observables`);
    ``stats``: their :class:`KeyStats` (``KeyStats.of(observables.T)``), if already computed: the
    preserved keys' statistics are then the total minus the class's, so an edit costs O(p^2 B + p^3).
    ``device``: the keys, statistics and solve live there (default: the network's; W' comes back).
    ``Edit.seconds`` is the whole call; ``diagnostics["solve_seconds"]`` the closed-form solve alone.
    """
    present = _check_edit_args(
        train, forget, into, method, max_target_accuracy=max_target_accuracy, n_keys=n_keys,
        tune_samples=tune_samples,
    )  # fmt: skip
    ridges = _edit_ridges(method, lambda_norm, lambda_emmet)
    start = time.perf_counter()
    home = surrogate.current_operator()
    W = home.double().to(device_for(surrogate.network, device))
    K_E, K_0, centroids = _keys(surrogate, train, forget, W, observables, stats)
    if into is None:
        into = nearest_class(centroids, forget, present)
    params: dict = {"seed": seed, **ridges}
    tune = (max_target_accuracy, tune_samples, seed)
    W_new, diag = _run_method(
        method, surrogate, train, forget, W, K_E, centroids[into], K_0, params, lam, lambda_mom2, n_keys, tune
    )
    after = MatrixOperator(W_new.to(home.device), surrogate.kae.k)
    seconds = time.perf_counter() - start
    return Edit(forget, into, method, params, surrogate.op, after, diagnostics=diag, seconds=seconds)


def _run_method(method, surrogate, train, forget, W, K_E, value, K_0, params, lam, lambda_mom2, n_keys, tune):
    """The method's closed-form solve with every key sent to ``value`` (the ``into`` centroid);
    records the settings it used in ``params``; returns (W', diagnostics)."""
    ridges = {k: params[k] for k in METHOD_RIDGES[method] if k in params}
    if method == "memit":
        if lam == "auto":
            params["max_target_accuracy"] = tune[0]
        V_E = value[:, None].expand(-1, K_E.shape[1])
        W_new, diag, params["lam"] = _memit_edit(
            surrogate, train, forget, W, K_E, V_E, K_0, lam, ridges, tune
        )
        return W_new, diag
    if method == "alphaedit":
        params["lam"] = ALPHAEDIT_LAM if lam == "auto" else lam
        return alphaedit(W, K_E, value[:, None].expand(-1, K_E.shape[1]), K_0, lam=params["lam"])
    if method == "emmet-kmeans":
        params["n_keys"] = n_keys or default_n_keys(W.shape[0], train.n_classes)
        K_E = reduce_keys(K_E, params["n_keys"], "kmeans", tune[2])
    params["lambda_mom2"] = lambda_mom2
    return emmet(W, K_E, value[:, None].expand(-1, K_E.shape[1]), K_0, lambda_mom2=lambda_mom2, **ridges)


def _edit_ridges(method: str, lambda_norm: float | None, lambda_emmet: float | None) -> dict[str, float]:
    """The method's ridges (:data:`METHOD_RIDGES`) with the ones given in their place."""
    ridges = {**METHOD_RIDGES[method]}
    if method == "alphaedit" and (lambda_norm is not None or lambda_emmet is not None):
        raise InputError("alphaedit takes lam (its ridge), not lambda_norm or lambda_emmet")
    if lambda_norm is not None:
        ridges["lambda_norm"] = lambda_norm
    if lambda_emmet is not None and method != "memit":
        ridges["lambda_emmet"] = lambda_emmet
    return ridges


def _keys(surrogate, train, forget, W, observables, stats):
    """Algorithm 1's keys: the class's phi(x_i) as columns (K_E), the statistics of every other
    training sample's (K_0: the total's minus the class's) and the class centroids of K phi(x_i), all
    on ``W``'s device."""
    z = class_observables(surrogate, train) if observables is None else observables.double()
    if z.shape != (len(train), W.shape[1]):
        raise InputError(f"observables must have shape ({len(train)}, {W.shape[1]}), got {tuple(z.shape)}")
    z, y = z.to(W.device), train.y.to(W.device)
    centroids = _class_centroids(z @ W.T, y)
    K_E = z[y == forget].T
    stats = KeyStats.of(z.T) if stats is None else stats.to(W.device)
    if stats.gram.shape != (z.shape[1], z.shape[1]) or stats.n != len(z):
        raise InputError("stats must be the KeyStats of the same observables")
    return K_E, KeyStats(stats.gram - K_E @ K_E.T, stats.n - K_E.shape[1]), centroids


def _memit_edit(surrogate, train, forget, W, K_E, V_E, K_0, lam, ridges, tune):
    """The least-squares edit at ``lam`` (a number, or ``"auto"``: :func:`_auto_lam` with ``tune`` =
    (max_target_accuracy, tune_samples, seed)); returns (W', diagnostics, lam)."""
    tuning: dict = {}
    if lam == "auto":
        lam, tuning = _auto_lam(surrogate, train, forget, W, K_E, V_E, K_0, ridges["lambda_norm"], *tune)
    elif not isinstance(lam, (int, float)) or isinstance(lam, bool):
        raise InputError(f"lam must be a number or 'auto', got {lam!r}")
    t_solve = time.perf_counter()
    W_new, diag = memit(W, K_E, V_E, K_0, lam=float(lam), **ridges)
    diag["solve_seconds"] = time.perf_counter() - t_solve
    diag.update(tuning)
    return W_new, diag, float(lam)


def _auto_lam(surrogate, train, forget, W, K_E, V_E, K_0, lambda_norm, max_acc, n_samples, seed):
    """Largest lam on a log grid whose edit leaves at most ``max_acc`` of a training sample of the
    class with its label (falls back to the smallest lam)."""
    t0 = time.perf_counter()
    idx = torch.nonzero(train.y == forget).flatten()
    g = torch.Generator().manual_seed(seed)
    idx = idx[torch.randperm(len(idx), generator=g)[:n_samples]]
    x = train.x[idx]
    grid = [float(v) for v in np.logspace(3, -2, 16)]
    chosen, tried = grid[-1], []
    for lam in grid:
        with warnings.catch_warnings():  # only the final solve's conditioning is reported
            warnings.simplefilter("ignore", IllConditionedWarning)
            W_new, _ = memit(W, K_E, V_E, K_0, lam=lam, lambda_norm=lambda_norm)
        sur = surrogate.with_operator(W_new.float())
        acc = float((sur.predict(x) == forget).double().mean())
        tried.append({"lam": lam, "train_target_accuracy": acc})
        if acc <= max_acc:
            chosen = lam
            break
    return chosen, {"lam_auto": tried, "tuning_seconds": time.perf_counter() - t0}


def evaluate_edit(surrogate: Surrogate, edit: Edit, test: Dataset, before: dict | None = None) -> dict:
    """Per-class accuracy before and after on ``test``; the target class's accuracy; the macro
    accuracy of the other classes. ``before``: ``surrogate.evaluate(test)`` when already computed
    (a run evaluates each seed's surrogate once for all its edits)."""
    before = surrogate.evaluate(test) if before is None else before
    after = edit.apply(surrogate).evaluate(test)
    others = [c for c in range(test.n_classes) if c != edit.forget]

    def macro(pc: list[float]) -> float:
        vals = [pc[c] for c in others if pc[c] == pc[c]]
        return float(np.mean(vals))

    return {
        "forget": edit.forget,
        "into": edit.into,
        "method": edit.method,
        "target_before": before["per_class"][edit.forget],
        "target_after": after["per_class"][edit.forget],
        "others_before": macro(before["per_class"]),
        "others_after": macro(after["per_class"]),
        "per_class_before": before["per_class"],
        "per_class_after": after["per_class"],
        "seconds": edit.seconds,
        "diagnostics": edit.diagnostics,
    }
