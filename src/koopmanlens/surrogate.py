"""The network with everything between layer i and layer j replaced by a Koopman autoencoder
(METHOD section 6), spliced in with forward hooks so it works for any ``torch.nn.Module``.

Forward hooks capture x_i at layer i and replace layer j's output with
``inverse_j(psi(K phi(transform_i(x_i))))``, K = exp(G) (or an edited operator); the rest of the network
then runs unchanged. Nothing about the network's structure (where its head is) is assumed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from koopmanlens.capture import capture, check_finite, get_module, splice_hooks, spliced_logits
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.kae import KAEConfig, KoopmanAE, train_kae
from koopmanlens.kae.model import check_steps
from koopmanlens.metrics import (
    agreement,
    classification_metrics,
    linear_cka,  # noqa: F401  (re-exported)
)
from koopmanlens.operators import KoopmanOperator, as_operator
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.states import aligned_layers  # noqa: F401  (re-exported)
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
        if "_op" in self.__dict__:
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
        """The older spelling of :attr:`op`, read only: ``None`` while the KAE's own generator is in
        use, else the operator's whole map (an edited matrix itself)."""
        return None if self._op.is_own(self.kae) else self._op.matrix

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


_MOVED = {"fit_through_layers", "layer_fidelity", "waypoint_steps"}


def __getattr__(name: str) -> object:
    """The all-layer trajectories live in :mod:`koopmanlens.trajectories`; their old names here still
    resolve."""
    if name in _MOVED:
        from koopmanlens import trajectories

        return getattr(trajectories, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
