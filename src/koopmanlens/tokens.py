"""Per-token Koopman lens: a KAE fitted on the positions of sequence models and spliced back per
position (transformers; issue 19).

A layer of a sequence model outputs (batch, seq, d), or a tuple whose first entry is that hidden
state (Hugging Face blocks). Per-token mode takes the rows to be positions: (batch * seq, d), with
padded positions left out (``mask``: (batch, seq), nonzero = a real token) and, optionally, only some
positions kept (``positions``: ``"last"``, the last real token of each sequence, or a list of
indices, negative ones counted from the end). The KAE is fitted on those rows, exactly as
:class:`~koopmanlens.surrogate.Surrogate` fits one on samples, and the splice replaces the hidden
state at layer j, at the same positions, by the prediction from layer i's state at that position;
every other position, and every other entry of a tuple output, is left as the network made it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from koopmanlens.capture import check_finite, get_module, hooks
from koopmanlens.errors import InputError
from koopmanlens.kae import KAEConfig, train_kae
from koopmanlens.operators import KoopmanOperator
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.surrogate import Surrogate
from koopmanlens.training import module_device

Positions = str | Sequence[int] | None


def hidden_state(output: object, name: str) -> torch.Tensor:
    """The hidden state of a module's output: the output itself, or the first entry of a tuple or
    list. :class:`InputError` when there is no tensor there."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    first = type(output[0]).__name__ if isinstance(output, (tuple, list)) and output else "nothing"
    raise InputError(
        f"module {name!r} returned {type(output).__name__} whose first entry is {first}, not a tensor: "
        "per-token mode needs the hidden state (batch, seq, d) as the output or its first entry"
    )


def with_hidden_state(output: object, new: torch.Tensor) -> object:
    """``output`` with its hidden state replaced by ``new`` (a tuple or list keeps its other entries
    and its type)."""
    if isinstance(output, torch.Tensor):
        return new
    rest = list(output[1:])  # type: ignore[index]
    return type(output)([new, *rest]) if isinstance(output, list) else (new, *rest)


def check_sequence(h: torch.Tensor, name: str) -> None:
    """:class:`InputError` unless ``h`` has shape (batch, seq, d)."""
    if h.ndim != 3:
        raise InputError(
            f"layer {name!r} outputs shape {tuple(h.shape)}; per-token mode needs (batch, seq, d)"
        )


def check_mask(mask: torch.Tensor | None, batch: int, seq: int) -> torch.Tensor:
    """The padding mask as a bool (batch, seq) tensor (all True when ``None``); :class:`InputError`
    for a mask of another shape."""
    if mask is None:
        return torch.ones(batch, seq, dtype=torch.bool)
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) != (batch, seq):
        raise InputError(
            f"the padding mask has shape {tuple(mask.shape)} but the inputs are (batch, seq) = "
            f"({batch}, {seq}); give one entry per token, nonzero for a real token"
        )
    return mask.bool()


def check_positions(positions: Positions) -> Positions:
    """``positions`` as given (a list of ints for a sequence); :class:`InputError` unless it is
    ``None``, ``"last"`` or a non-empty sequence of integers."""
    if positions is None or positions == "last":
        return positions
    if isinstance(positions, str) or not isinstance(positions, Sequence) or not positions:
        raise InputError(f"positions must be None, 'last' or a non-empty list of indices, got {positions!r}")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in positions):
        raise InputError(f"positions must be integers, got {list(positions)!r}")
    return list(positions)


def position_selection(mask: torch.Tensor, positions: Positions) -> torch.Tensor:
    """Bool (batch, seq): the real tokens (``mask``) among the chosen ``positions`` (``None``: all;
    ``"last"``: the last real token of each sequence; a list of indices, negative from the end)."""
    mask = torch.as_tensor(mask).bool()
    batch, seq = mask.shape
    if positions is None:
        return mask.clone()
    chosen = torch.zeros(batch, seq, dtype=torch.bool)
    positions = check_positions(positions)
    if positions == "last":
        last = seq - 1 - mask.flip(1).int().argmax(1)
        chosen[torch.arange(batch), last] = True
        return chosen & mask
    idx = list(positions)  # type: ignore[arg-type]
    if any(not -seq <= i < seq for i in idx):
        raise InputError(f"positions {idx} must be a non-empty list of indices into length {seq}")
    chosen[:, idx] = True
    return chosen & mask


def check_same_positions(h_i: torch.Tensor, h_j: torch.Tensor, layer_i: str, layer_j: str) -> None:
    """:class:`InputError` when the hidden states of layers i and j differ in batch or sequence
    length (the KAE maps position t of layer i to position t of layer j)."""
    if h_i.shape[:2] != h_j.shape[:2]:
        raise InputError(
            f"layer {layer_i!r} has (batch, seq) = {tuple(h_i.shape[:2])} but layer {layer_j!r} has "
            f"{tuple(h_j.shape[:2])}: per-token mode needs the same positions at both layers"
        )


def input_vocabulary(model: nn.Module) -> int | None:
    """The number of token ids the model embeds: its input embedding's rows (Hugging Face's
    ``get_input_embeddings``, else the first ``nn.Embedding``), ``None`` when it has none."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    return emb.num_embeddings if isinstance(emb, nn.Embedding) else None


def check_vocabulary(model: nn.Module, inputs: torch.Tensor) -> None:
    """Token ids must index the model's embedding: an id outside [0, vocabulary) means the
    tokenizer and the model do not match (one clear message instead of an index error)."""
    vocab = input_vocabulary(model)
    if vocab is None or inputs.is_floating_point() or inputs.numel() == 0:
        return
    lo, hi = int(inputs.min()), int(inputs.max())
    if lo < 0 or hi >= vocab:
        bad = lo if lo < 0 else hi
        raise InputError(
            f"token id {bad} is outside the model's vocabulary of {vocab} ids (its input embedding): "
            "the tokenizer and the model do not match"
        )


def run_batches(
    model: nn.Module,
    inputs: torch.Tensor,
    mask: torch.Tensor | None,
    batch_size: int,
    fn: Callable[[torch.Tensor, torch.Tensor], None],
) -> None:
    """Call ``fn(input batch, mask batch)`` over ``inputs`` (batch, seq) in eval mode, no gradients;
    the mask is checked here (:func:`check_mask`)."""
    inputs = torch.as_tensor(inputs)
    if inputs.ndim < 2 or len(inputs) == 0:
        raise InputError(f"inputs must be a non-empty (batch, seq) tensor, got shape {tuple(inputs.shape)}")
    full = check_mask(mask, inputs.shape[0], inputs.shape[1])
    check_vocabulary(model, inputs)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(inputs), batch_size):
                fn(inputs[s : s + batch_size].to(module_device(model)), full[s : s + batch_size])
    finally:
        model.train(was)


def capture_tokens(
    model: nn.Module,
    inputs: torch.Tensor,
    layers: Sequence[str],
    mask: torch.Tensor | None = None,
    positions: Positions = None,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Per-token representations ``{name: (rows, d)}`` float32 on the CPU: the selected positions
    (:func:`position_selection`) in row-major (sequence, position) order, the same rows at every
    layer. ``model(batch)`` is called on slices of ``inputs`` (token ids, (batch, seq))."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise InputError("name at least one layer to capture")
    for name in layers:
        get_module(model, name)
    store: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    seen: dict[str, torch.Tensor] = {}

    def make_hook(name: str) -> Callable:
        def hook(_m: nn.Module, _inp: object, output: object) -> None:
            h = hidden_state(output, name)
            check_sequence(h, name)
            seen[name] = h.detach()

        return hook

    def step(xb: torch.Tensor, mb: torch.Tensor) -> None:
        seen.clear()
        with hooks(model, {name: make_hook(name) for name in layers}):
            model(xb)
        missing = [name for name in layers if name not in seen]
        if missing:
            raise InputError(f"module(s) {missing} were never called in the forward pass")
        for name in layers:
            check_same_positions(seen[layers[0]], seen[name], layers[0], name)
            sel = position_selection(mb, positions).to(seen[name].device)
            store[name].append(seen[name][sel].float().cpu())

    run_batches(model, inputs, mask, batch_size, step)
    out = {name: torch.cat(rows) for name, rows in store.items()}
    for name, rows in out.items():
        if len(rows) == 0:
            raise InputError("no positions selected: the mask and positions leave no token")
        check_finite(rows, f"the representation at layer {name!r}")
    return out


RowMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def splice(
    model: nn.Module, layer_i: str, layer_j: str, row_map: RowMap, selection: torch.Tensor
) -> Iterator[None]:
    """Forward hooks for one forward pass of a batch: at layer j, the hidden state's rows selected
    by ``selection`` (bool (batch, seq)) become ``row_map(x_i rows, x_j rows)``; everything else
    (other positions, other tuple entries) is the network's own. Hooks are always removed."""
    stash: dict[str, torch.Tensor] = {}

    def at_i(_m: nn.Module, _inp: object, output: object) -> None:
        h = hidden_state(output, layer_i)
        check_sequence(h, layer_i)
        stash["x_i"] = h.detach()

    def at_j(_m: nn.Module, _inp: object, output: object) -> object:
        if "x_i" not in stash:
            raise InputError(f"layer {layer_j!r} ran before layer {layer_i!r}: layer_i must come first")
        h_i, h_j = stash.pop("x_i"), hidden_state(output, layer_j)
        check_sequence(h_j, layer_j)
        check_same_positions(h_i, h_j, layer_i, layer_j)
        if tuple(selection.shape) != tuple(h_j.shape[:2]):
            raise InputError(
                f"the selection has shape {tuple(selection.shape)}, the batch {tuple(h_j.shape[:2])}"
            )
        sel = selection.to(h_j.device)
        new = h_j.clone()
        rows = row_map(h_i[sel].float(), h_j[sel].float())
        new[sel] = rows.to(device=h_j.device, dtype=h_j.dtype)
        return with_hidden_state(output, new)

    with hooks(model, {layer_i: at_i, layer_j: at_j}):
        yield


def output_logits(output: object) -> torch.Tensor:
    """The logits of a model's output: a tensor, an object with ``.logits`` (Hugging Face), or the
    first entry of a tuple."""
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    return hidden_state(output, "the model")


class TokenSurrogate(Surrogate):
    """A KAE between layers i and j of a sequence model, fitted and spliced per position.

    ``positions`` (``None``, ``"last"`` or indices) chooses the positions it is fitted on and
    spliced at; padded positions (``mask`` == 0) are never used for fitting. Everything that works
    on rows of x_i (``encode_i``, ``predict_state``, the operator, its edits) is the
    :class:`~koopmanlens.surrogate.Surrogate`'s; ``with_operator`` (and so an edit's ``apply`` and
    ``revert``) gives a :class:`TokenSurrogate` with the same positions.
    """

    def __init__(
        self,
        network: nn.Module,
        layer_i: str,
        layer_j: str,
        preprocessor: PairPreprocessor,
        kae: nn.Module,
        positions: Positions = None,
        operator: KoopmanOperator | torch.Tensor | None = None,
    ) -> None:
        self.positions = check_positions(positions)  # before the base class freezes the surrogate
        super().__init__(network, layer_i, layer_j, preprocessor, kae, operator)  # type: ignore[arg-type]

    @classmethod
    def fit(  # type: ignore[override]
        cls,
        network: nn.Module,
        inputs: torch.Tensor,
        layer_i: str,
        layer_j: str,
        mask: torch.Tensor | None = None,
        positions: Positions = None,
        preset: str | KAEConfig = "yinyang",
        seed: int = 0,
        val: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        q: int | None = None,
        progress: bool = False,
        **overrides: object,
    ) -> TokenSurrogate:
        """Capture x_i and x_j per token on ``inputs`` (token ids, (batch, seq)), fit the
        preprocessing and a KAE on those rows. ``val``: held-out (inputs, mask) for the best-epoch
        choice."""
        if layer_i == layer_j:
            raise InputError("layer_i and layer_j must be two different layers")
        reps = capture_tokens(network, inputs, [layer_i, layer_j], mask, positions)
        pre = PairPreprocessor(q).fit(reps[layer_i], reps[layer_j])
        z_i, z_j = pre.transform(reps[layer_i], reps[layer_j])
        val_pair = None
        if val is not None:
            vreps = capture_tokens(network, val[0], [layer_i, layer_j], val[1], positions)
            val_pair = pre.transform(vreps[layer_i], vreps[layer_j])
        kae = train_kae(z_i, z_j, preset, seed=seed, val=val_pair, progress=progress, **overrides)
        return cls(network, layer_i, layer_j, pre, kae, positions)

    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Not per token: :class:`InputError` pointing to :meth:`token_representations` (the
        whole-output methods of :class:`Surrogate` would flatten the sequence)."""
        raise InputError("a TokenSurrogate works per position: use token_representations(inputs, mask)")

    def _splice_hooks(self) -> dict[str, Callable]:
        raise InputError(
            "a TokenSurrogate splices per position: use token_logits(inputs, mask) or "
            "koopmanlens.lm_metrics.evaluate_splice"
        )

    def token_representations(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        """The network's own x_i and x_j rows at the surrogate's positions."""
        return capture_tokens(self.network, inputs, [self.layer_i, self.layer_j], mask, self.positions)

    def kae_map(self) -> RowMap:
        """The row map that :func:`splice` uses: x_i rows -> predicted x_j rows."""
        parts: dict[torch.device, tuple] = {}

        def row_map(x_i: torch.Tensor, _x_j: torch.Tensor) -> torch.Tensor:
            if x_i.device not in parts:
                parts[x_i.device] = self._parts_on(x_i.device)
            return self._predict_with(x_i, *parts[x_i.device])

        return row_map

    def token_logits(
        self, inputs: torch.Tensor, mask: torch.Tensor | None = None, batch_size: int = 256
    ) -> torch.Tensor:
        """Logits (batch, seq, vocab) on the CPU of the network with the KAE spliced in at the
        surrogate's positions."""
        out: list[torch.Tensor] = []
        row_map = self.kae_map()

        def step(xb: torch.Tensor, mb: torch.Tensor) -> None:
            with splice(
                self.network, self.layer_i, self.layer_j, row_map, position_selection(mb, self.positions)
            ):
                out.append(output_logits(self.network(xb)).float().cpu())

        run_batches(self.network, inputs, mask, batch_size, step)
        return torch.cat(out)
