"""The network with everything between layer i and layer j replaced by a Koopman autoencoder
(METHOD section 6), spliced in with forward hooks so it works for any ``torch.nn.Module``.

Forward hooks capture x_i at layer i and replace layer j's output with
``inverse_j(psi(K phi(transform_i(x_i))))``, K = exp(G) (or an edited operator); the rest of the network
then runs unchanged. Nothing about the network's structure (where its head is) is assumed.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from koopmanlens.capture import capture, check_finite, get_module, splice_hooks, spliced_logits
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.kae import KAEConfig, KoopmanAE, train_kae
from koopmanlens.kae.model import check_steps
from koopmanlens.metrics import agreement, classification_metrics
from koopmanlens.operators import KoopmanOperator, as_operator
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.subject import predict_logits


class Surrogate:
    """A fitted KAE between two named layers of a network, with the preprocessing that links them.

    Immutable: :meth:`with_operator` gives a surrogate with another operator (an edit's), sharing
    the network, the preprocessing and the KAE.

    Attributes:
        network: the subject network (left unchanged; hooks are added only during a call).
        layer_i, layer_j: module names of the two layers.
        preprocessor: fitted :class:`PairPreprocessor`.
        kae: fitted :class:`KoopmanAE`.
        op: the :class:`~koopmanlens.operators.KoopmanOperator` in use, column convention
            ``z_next = K z``: the KAE's own generator (``GeneratorOperator.of(kae)``) unless another
            was given (an edited :class:`~koopmanlens.operators.MatrixOperator`, see
            :mod:`koopmanlens.editing`). ``operator`` (``None`` or a tensor) and a tensor or ``None``
            in its place are the older spelling.
        waypoints_: for a surrogate fitted through layers (:func:`fit_through_layers`),
            ``{"layers": [...], "steps": [...]}``; else ``None``.
    """

    network: nn.Module
    layer_i: str
    layer_j: str
    preprocessor: PairPreprocessor
    kae: KoopmanAE
    waypoints_: dict | None
    _op: KoopmanOperator

    def __init__(
        self,
        network: nn.Module,
        layer_i: str,
        layer_j: str,
        preprocessor: PairPreprocessor,
        kae: KoopmanAE,
        operator: KoopmanOperator | torch.Tensor | None = None,
        waypoints: dict | None = None,
    ) -> None:
        get_module(network, layer_i)
        get_module(network, layer_j)
        if layer_i == layer_j:
            raise InputError("layer_i and layer_j must be two different layers")
        self.network = network
        self.layer_i = layer_i
        self.layer_j = layer_j
        self.preprocessor = preprocessor
        self.kae = kae
        self.waypoints_ = waypoints
        self._op = as_operator(operator, kae)  # set last: the surrogate is frozen from here on

    def __setattr__(self, name: str, value: object) -> None:
        if "_op" in self.__dict__ and name != "operator":
            raise AttributeError(
                f"a {type(self).__name__} is immutable (tried to set {name!r}): use with_operator(...) "
                "for another operator"
            )
        object.__setattr__(self, name, value)

    @property
    def op(self) -> KoopmanOperator:
        """The operator in use (see the class docstring)."""
        return self._op

    def with_operator(self, op: KoopmanOperator | torch.Tensor | None) -> Surrogate:
        """A surrogate of the same type and fields (network, preprocessing, KAE, and a subclass's
        own) that uses ``op``: an operator, bound to the KAE (:meth:`KoopmanOperator.bind
        <koopmanlens.operators.KoopmanOperator.bind>`: (p, p) and the KAE's k), a (p, p) matrix, or
        ``None`` for the KAE's own generator. This surrogate is unchanged."""
        new = copy.copy(self)
        object.__setattr__(new, "_op", as_operator(op, self.kae))
        return new

    @property
    def operator(self) -> torch.Tensor | None:
        """The older spelling of :attr:`op`: ``None`` while the KAE's own generator is in use, else
        the operator's whole map (an edited matrix itself)."""
        return None if self._op.is_own(self.kae) else self._op.matrix

    @operator.setter
    def operator(self, value: KoopmanOperator | torch.Tensor | None) -> None:
        warnings.warn(
            "setting Surrogate.operator changes a surrogate in place; use surrogate.with_operator(...)",
            DeprecationWarning,
            stacklevel=3,  # the caller of ``surrogate.operator = ...`` (through __setattr__)
        )
        object.__setattr__(self, "_op", as_operator(value, self.kae))

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        network: nn.Module,
        train: Dataset,
        layer_i: str,
        layer_j: str,
        preset: str | KAEConfig = "yinyang",
        seed: int = 0,
        val: Dataset | None = None,
        q: int | None = None,
        preprocessor: PairPreprocessor | None = None,
        log_path: str | None = None,
        device: str | None = None,
        progress: bool = True,
        **overrides: object,
    ) -> Surrogate:
        """Capture x_i and x_j on ``train``, fit the preprocessing (unless given) and a KAE.

        ``val`` (held-out data) is used only to log the validation state loss and pick the best
        epoch. ``preset`` and ``overrides`` configure the KAE (:func:`koopmanlens.kae.kae_config`).
        """
        if layer_i == layer_j:
            raise InputError("layer_i and layer_j must be two different layers")
        reps = capture(network, train.x, [layer_i, layer_j])
        if preprocessor is None:
            preprocessor = PairPreprocessor(q).fit(reps[layer_i], reps[layer_j])
        z_i, z_j = preprocessor.transform(reps[layer_i], reps[layer_j])
        val_pair = None
        if val is not None:
            vreps = capture(network, val.x, [layer_i, layer_j])
            val_pair = preprocessor.transform(vreps[layer_i], vreps[layer_j])
        kae = train_kae(
            z_i,
            z_j,
            preset,
            seed=seed,
            val=val_pair,
            log_path=log_path,
            device=device,
            progress=progress,
            **overrides,
        )
        return cls(network, layer_i, layer_j, preprocessor, kae)

    # ------------------------------------------------------------------ observables
    def check_operator(self) -> None:
        """:class:`InputError` when the operator in use, the generator G (or the edited operator),
        holds NaN or inf: a diverged or corrupt KAE. Called before any exponential, power or
        eigen-decomposition of it, which would otherwise return garbage or crash (LAPACK on NaN)."""
        self._op.check_finite()

    def current_operator(self) -> torch.Tensor:
        """The whole map of the operator in use: exp(G), or the edited matrix. :class:`InputError`
        when it is not finite (:meth:`check_operator`)."""
        self.check_operator()
        with torch.no_grad():
            return self._op.matrix

    @torch.no_grad()
    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's own x_i and x_j for inputs ``x``."""
        return capture(self.network, x, [self.layer_i, self.layer_j])

    @torch.no_grad()
    def encode_i(self, x_i: torch.Tensor) -> torch.Tensor:
        """phi(transform_i(x_i)): observables of raw layer-i representations."""
        return self.kae.encode(self.preprocessor.transform_i(x_i).float())

    def _parts_on(self, device: torch.device) -> tuple[KoopmanAE, PairPreprocessor, torch.Tensor]:
        """The KAE, the preprocessing and the operator, on ``device``: the surrogate's own where they
        live there already, else copies (the surrogate itself is not moved)."""
        kae = self.kae
        if kae.generator.device != device:
            kae = copy.deepcopy(kae).to(device)
        return kae, self.preprocessor.to(device), self.current_operator().to(device)

    @torch.no_grad()
    def predict_state(self, x_i: torch.Tensor) -> torch.Tensor:
        """Raw layer-j representation predicted from raw layer-i representation ``x_i``, computed on
        the device ``x_i`` lives on."""
        x_i = torch.as_tensor(x_i)
        return self._predict_with(x_i, *self._parts_on(x_i.device))

    @staticmethod
    def _predict_with(
        x_i: torch.Tensor, kae: KoopmanAE, pre: PairPreprocessor, operator: torch.Tensor
    ) -> torch.Tensor:
        check_finite(x_i, "x_i")
        z = kae.encode(pre.transform_i(x_i).float()) @ operator.T
        return pre.inverse_transform_j(kae.decode(z).double()).float()

    def _splice_hooks(self) -> dict[str, Callable]:
        """Hooks that splice the KAE in. The prediction runs on the device of layer i's output (the
        network's): the KAE, preprocessing and operator are placed there once per forward pass
        block (cached by device), so no batch goes through the host."""
        parts: dict[torch.device, tuple[KoopmanAE, PairPreprocessor, torch.Tensor]] = {}

        def predict(x_i: torch.Tensor) -> torch.Tensor:
            x_i = x_i.float()
            if x_i.device not in parts:
                parts[x_i.device] = self._parts_on(x_i.device)
            return self._predict_with(x_i, *parts[x_i.device])

        return splice_hooks(self.layer_i, self.layer_j, predict)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Logits of the network with the KAE in place of layers i..j."""
        return spliced_logits(self.network, self._splice_hooks(), x, batch_size)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class predictions of the spliced network."""
        return self.logits(x).argmax(1)

    def evaluate(self, data: Dataset) -> dict:
        """``{"top1", "macro", "per_class", "agreement", "seconds"}`` on ``data``; agreement is with
        the original network's predictions."""
        start = time.perf_counter()
        pred = self.predict(data.x)
        original = predict_logits(self.network, data.x).argmax(1)
        out = classification_metrics(pred, data.y, data.n_classes)
        out["agreement"] = agreement(pred, original)
        out["seconds"] = time.perf_counter() - start
        return out

    # ------------------------------------------------------------------ trajectories
    @torch.no_grad()
    def observable_trajectory(self, x: torch.Tensor, steps: list[float] | None = None) -> torch.Tensor:
        """Observables K^(s/k) phi(x_i) for s = 0..k (or ``steps``, each a finite number in [0, k]:
        :class:`InputError` otherwise), shape (S, n, p): ``op.power(s)`` of the operator in use.

        K^(s/k) is exp(sG/k) for an unedited KAE; after an edit replaced the operator it is the
        fractional matrix power of the edited operator, and :class:`InputError` is raised if that
        power is not real (the steps are then unavailable).
        """
        self.check_operator()
        k = self.kae.k
        steps = list(range(k + 1)) if steps is None else check_steps(steps, k)
        x_i = self.representations(x)[self.layer_i]
        dev = self.kae.generator.device
        z = self.kae.encode(self.preprocessor.transform_i(x_i).float().to(dev))
        return torch.stack([(z @ self._op.power(s).to(dev).T).cpu() for s in steps])

    @torch.no_grad()
    def trajectory(self, x: torch.Tensor, steps: list[float] | None = None) -> torch.Tensor:
        """Decoded states psi(exp(sG/k) phi(x_i)) in the preprocessed (common) space, s = 0..k:
        shape (S, n, q). Step k is the prediction of preprocessed x_j."""
        obs = self.observable_trajectory(x, steps)
        return torch.stack([self.kae.decode(o) for o in obs])


def aligned_layers(
    network: nn.Module,
    layers: Sequence[str],
    train: Dataset,
    data: Dataset,
    q: int | None = None,
    max_fit_points: int = 10000,
    seed: int = 0,
    reference: PairPreprocessor | None = None,
) -> dict[str, torch.Tensor]:
    """Every layer's representation of ``data`` preprocessed and aligned to the last layer (METHOD
    section 4), fitted on up to ``max_fit_points`` training samples. With ``reference`` (a
    surrogate's preprocessor) the last layer is scaled by its ``scaler_j_``, so that every layer
    lands exactly in the space where that KAE's decoded steps live."""
    g = torch.Generator().manual_seed(seed)
    fit_idx = torch.randperm(len(train), generator=g)[:max_fit_points]
    tr = capture(network, train.x[fit_idx], list(layers))
    te = capture(network, data.x, list(layers))
    last = layers[-1]
    out = {}
    ref_scaler = None if reference is None else reference.scaler_j_
    for name in layers:
        pre = PairPreprocessor(q).fit(tr[name], tr[last], scaler_j=ref_scaler)
        out[name] = pre.transform_i(te[name]) if name != last else pre.transform_j(te[name])
    return out


def waypoint_steps(n_between: int, k: int) -> list[int]:
    """Steps s_l = round(l k / L) for the ``n_between`` layers strictly between i and j, L = n + 1."""
    L = n_between + 1
    return [round(idx * k / L) for idx in range(1, L)]


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) between two representations of the same rows:
    ||B^T A||_F^2 / (||A^T A||_F ||B^T B||_F) on column-centred matrices; 1 = same up to rotation
    and scale."""
    a = torch.as_tensor(a).double()
    b = torch.as_tensor(b).double()
    if a.shape[0] != b.shape[0]:
        raise InputError(f"CKA needs the same rows: {a.shape[0]} vs {b.shape[0]}")
    a = a - a.mean(0)
    b = b - b.mean(0)
    num = torch.linalg.norm(b.T @ a) ** 2
    den = torch.linalg.norm(a.T @ a) * torch.linalg.norm(b.T @ b)
    return float(num / den) if den > 0 else 0.0


def fit_through_layers(
    network: nn.Module,
    train: Dataset,
    layers: Sequence[str],
    preset: str | KAEConfig = "yinyang",
    seed: int = 0,
    q: int | None = None,
    max_fit_points: int = 10000,
    progress: bool = True,
    **overrides: object,
) -> Surrogate:
    """A KAE from ``layers[0]`` to ``layers[-1]`` whose step s_l = round(l k / L) decodes to the
    aligned representation of ``layers[l]`` (all-layer trajectories; paper section 5). The
    surrogate gets ``waypoints_ = {"layers": [...], "steps": [...]}``."""
    if len(layers) < 3:
        raise InputError("name at least three layers: i, one or more in between, and j")
    layer_i, layer_j, between = layers[0], layers[-1], list(layers[1:-1])
    reps = capture(network, train.x, list(layers))
    pre = PairPreprocessor(q).fit(reps[layer_i], reps[layer_j])
    z_i, z_j = pre.transform(reps[layer_i], reps[layer_j])
    targets = []
    for name in between:
        aligner = PairPreprocessor(q).fit(reps[name], reps[layer_j], scaler_j=pre.scaler_j_)
        targets.append(aligner.transform_i(reps[name]))
    from koopmanlens.kae import kae_config

    cfg = kae_config(preset, **overrides)
    steps = waypoint_steps(len(between), cfg.k)
    kae = train_kae(
        z_i, z_j, cfg, seed=seed, progress=progress, waypoints=(steps, torch.stack(targets).float())
    )
    return Surrogate(network, layer_i, layer_j, pre, kae, waypoints={"layers": between, "steps": steps})


def layer_fidelity(
    surrogate: Surrogate, train: Dataset, test: Dataset, layers: Sequence[str], seed: int = 0
) -> list[dict]:
    """For each layer strictly between i and j: linear CKA and relative Frobenius error between the
    KAE's decoded state at step s_l = round(l k / L) and the layer's real representation of ``test``
    (aligned to layer j, fitted on ``train``)."""
    layers = list(layers)
    between = layers[1:-1]
    steps = waypoint_steps(len(between), surrogate.kae.k)
    aligned = aligned_layers(
        surrogate.network,
        layers,
        train,
        test,
        surrogate.preprocessor.q,
        seed=seed,
        reference=surrogate.preprocessor,
    )
    states = surrogate.trajectory(test.x, steps=[float(s) for s in steps])
    out = []
    for name, step, state in zip(between, steps, states, strict=True):
        real = aligned[name].double()
        rel = float(torch.linalg.norm(state.double() - real) / torch.linalg.norm(real))
        out.append({"layer": name, "step": step, "cka": linear_cka(state, real), "relative_error": rel})
    return out
