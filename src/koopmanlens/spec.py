"""Experiments as data: a frozen, typed :class:`ExperimentSpec` read from and written to TOML.

One spec says *what* to compute: the data and its splits, the network (a built-in residual MLP
trained from a preset, or a user's ``package.module:factory`` plus a safetensors state dict), the
span ``layer_i -> layer_j``, the preprocessing width ``q``, the KAE, the edits, the topology and the
number of KAE seeds. *How* to run it (device, progress, resume, output folder) is
:class:`koopmanlens.experiment.RunOptions`, kept apart.

Built-in specs ship as files in ``koopmanlens/specs/`` (``koopmanlens specs`` lists them,
``koopmanlens spec NAME`` prints one). Reading uses :mod:`tomllib`, writing :mod:`tomli_w`, checking
pydantic: a bad file gives one :class:`~koopmanlens.errors.InputError` naming the field, the value
and what is allowed.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from koopmanlens.errors import InputError

Scalar = int | float | str | bool | list[int] | list[float] | list[str] | None
PosInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataSpec(_Frozen):
    """Where the data come from. ``yinyang``: the generator (``n_*`` sizes, default METHOD's);
    ``mnist``: the official files (``path`` or ``--data-dir``; ``subset`` for smoke tests);
    ``idx``: a folder of IDX files in MNIST's format (no checksum: a user's data; ``validation``
    rows carved from the end of the training files); ``files``: ``.npz`` or ``.safetensors`` files
    holding ``x`` and ``y`` per split (paths relative to the spec file); ``modadd``: the pairs
    ``a b =`` of modular addition (:mod:`koopmanlens.testbeds.modadd`); ``text``: a character corpus
    that ships with Python, cut into windows (:mod:`koopmanlens.testbeds.chargpt`)."""

    source: Literal["yinyang", "mnist", "idx", "files", "modadd", "text"]
    """Where the data come from; each source takes only the fields named with it below."""
    path: str | None = None
    """mnist / idx: the folder of IDX files (relative to the spec file; ``--data-dir`` overrides it)."""
    n_train: PosInt | None = None
    """yinyang: training points (``None``: METHOD's 5,000)."""
    n_val: PosInt | None = None
    """yinyang: validation points (``None``: METHOD's 1,000)."""
    n_test: PosInt | None = None
    """yinyang: test points (``None``: METHOD's 5,000)."""
    subset: PosInt | None = None
    """mnist / idx: keep the first N training rows only (smoke tests)."""
    validation: Annotated[int, Field(ge=0)] | None = None
    """idx: rows carved from the end of the training files for validation (``None``: 0)."""
    train: str | None = None
    """files: the training split, a ``.npz`` or ``.safetensors`` file with ``x`` (n, ...) and ``y`` (n,)."""
    val: str | None = None
    """files: the validation split (optional), same format."""
    test: str | None = None
    """files: the test split, same format."""
    class_names: list[str] | None = None
    """Readable class names, one per class (``None``: ``"0"``, ``"1"``, ...)."""
    p: Annotated[int, Field(ge=3)] = 113
    """modadd: the modulus (tokens 0..p-1 and ``=``)."""
    train_frac: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    """modadd: the share of the p^2 pairs used for training (10% of it held out as validation); the
    rest is the test split."""
    split_seed: Annotated[int, Field(ge=0)] = 0
    """modadd: the seed of the pairs' permutation into the splits."""
    corpus: Literal["pydoc-topics"] = "pydoc-topics"
    """text: the corpus (``pydoc-topics``: CPython's help texts, ``pydoc_data.topics``, checksummed)."""
    seq_len: Annotated[int, Field(ge=2)] = 128
    """text: characters per window (the network's context length)."""
    max_windows: PosInt | None = None
    """text: keep the first N windows of each split (smoke tests; ``None``: all)."""

    @model_validator(mode="after")
    def _fields_fit_source(self) -> DataSpec:
        allowed = {
            "yinyang": {"n_train", "n_val", "n_test", "class_names"},
            "mnist": {"path", "subset", "class_names"},
            "idx": {"path", "validation", "subset", "class_names"},
            "files": {"train", "val", "test", "class_names"},
            "modadd": {"p", "train_frac", "split_seed"},
            "text": {"corpus", "seq_len", "max_windows"},
        }[self.source]
        extra = sorted(k for k in self.model_fields_set - {"source"} if k not in allowed)
        if extra:
            raise ValueError(
                f"fields {extra} do not apply to source {self.source!r} (allowed: {sorted(allowed)})"
            )
        if self.source == "idx" and not self.path:
            raise ValueError("source 'idx' needs path = the folder of IDX files")
        if self.source == "files" and not (self.train and self.test):
            raise ValueError("source 'files' needs train and test file names")
        return self


TOKEN_KINDS = {"modadd": "modadd", "chargpt": "text"}
"""The sequence-model testbeds (per-token mode) and the data source each is trained on."""


class NetworkSpec(_Frozen):
    """The network under study: ``resmlp`` (METHOD section 2) trained from ``preset`` with
    ``overrides`` and ``seed``; ``factory``: ``"package.module:function"`` returning the
    ``nn.Module`` and ``weights``, its safetensors state dict (path relative to the spec file); or a
    sequence-model testbed trained here from ``overrides`` and ``seed`` (``modadd``: the one-layer
    transformer of modular addition; ``chargpt``: a character-level GPT), studied per token."""

    kind: Literal["resmlp", "factory", "modadd", "chargpt"] = "resmlp"
    """``resmlp``: the residual MLP of METHOD section 2, trained here; ``factory``: your own network;
    ``modadd`` / ``chargpt``: a transformer testbed, trained here (docs/transformers.md)."""
    preset: str | None = None
    """resmlp: a subject preset (``yinyang``, ``mnist``; see :data:`koopmanlens.subject.SUBJECT_PRESETS`)."""
    overrides: dict[str, Scalar] = Field(default_factory=dict)
    """resmlp: fields of :class:`koopmanlens.subject.SubjectConfig` to change, e.g. ``{ epochs = 40 }``;
    modadd / chargpt: fields of the testbed's config (:mod:`koopmanlens.lm_testbeds`)."""
    seed: Annotated[int, Field(ge=0)] = 0
    """resmlp / modadd / chargpt: the training seed of the network."""
    factory: str | None = None
    """factory: ``"package.module:function"`` returning the ``nn.Module`` (a ``module.py`` next to the
    spec file is found too)."""
    weights: str | None = None
    """factory: the network's safetensors state dict (relative to the spec file; loaded strictly)."""

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> NetworkSpec:
        if self.kind == "resmlp":
            if not self.preset or self.factory or self.weights:
                raise ValueError("kind 'resmlp' needs preset (and takes no factory or weights)")
        elif self.kind in TOKEN_KINDS:
            if self.preset or self.factory or self.weights:
                raise ValueError(
                    f"kind {self.kind!r} takes overrides and seed (no preset, factory or weights)"
                )
        elif not (self.factory and self.weights) or self.preset or self.overrides:
            raise ValueError("kind 'factory' needs factory = 'package.module:function' and weights")
        if self.factory is not None and (self.factory.count(":") != 1 or not all(self.factory.split(":"))):
            raise ValueError(f"factory must read 'package.module:function', got {self.factory!r}")
        return self


class SpanSpec(_Frozen):
    """The layers: ``layer_i`` and ``layer_j`` by ``named_modules()`` name (``layer_j``: default the
    last representation layer of a ResMLP; required for a user's network)."""

    layer_i: str = "input"
    """The earlier layer, by ``named_modules()`` name (``input``: a ResMLP's input layer)."""
    layer_j: str | None = None
    """The later layer (``None``: a ResMLP's last block; required for your own network)."""
    positions: Literal["all", "last"] | list[int] | None = None
    """Sequence models only (per-token mode, :mod:`koopmanlens.tokens`): the positions whose rows
    the KAE is fitted on and spliced at: ``"all"`` (default), ``"last"`` or a list of indices
    (negative ones from the end)."""
    fit_sequences: PosInt | None = None
    """Sequence models only: fit the preprocessing, the KAEs and the linear baseline on a seeded
    subsample (seed 0) of this many training sequences (``None``: all of them)."""


class PreprocessingSpec(_Frozen):
    """METHOD section 4: ``q`` principal axes per layer (``None``: full width, a lossless rotation)."""

    q: PosInt | None = None
    """Principal axes kept per layer (``None``: full width, a lossless rotation)."""


class KAESpec(_Frozen):
    """The KAE: a preset of :func:`koopmanlens.kae.kae_config` with field ``overrides``."""

    preset: str
    """A KAE preset: ``yinyang``, ``yinyang-paper`` or ``mnist``
    (:data:`koopmanlens.kae.trainer.KAE_PRESETS`)."""
    overrides: dict[str, Scalar] = Field(default_factory=dict)
    """Fields of :class:`koopmanlens.kae.KAEConfig` to change, e.g. ``{ epochs = 60 }``."""


class EditingSpec(_Frozen):
    """METHOD section 8: the classes to unlearn, the solver and the automatic lam's threshold."""

    classes: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    """Classes to unlearn, one edit each (none: no editing)."""
    method: Literal["memit", "emmet-kmeans", "emmet", "alphaedit"] = "memit"
    """The solver: least squares with all keys (``memit``), exact EMMET on k-means keys
    (``emmet-kmeans``), or EMMET with all keys and ridges (``emmet``)."""
    max_target_accuracy: Fraction = 0.01
    """memit: the automatic lam is the largest for which at most this fraction of a training sample
    of the class keeps its label."""


class TopologySpec(_Frozen):
    """METHOD section 7: whether the run computes the topology block."""

    enabled: bool = True
    """Compute the topology block (Betti numbers along the layers and the KAE steps)."""


class StoreSpec(_Frozen):
    """Train the KAEs from a paired activation store (docs/activation-store.md) instead of in memory:
    the training split's (x_i, x_j) are captured to shards on disk and streamed back, and the run can
    be launched data parallel with ``torchrun``. The store's reading is part of what is computed (it
    sets the batches), so it lives here; where the store is written is ``koopmanlens run --store``."""

    parts: PosInt | None = None
    """The parts of each global KAE batch, each read from its own shards through its own shuffling
    buffer (``None``: no store, the KAEs train in memory). The same ``parts`` gives the same weights on
    any number of processes dividing it; another ``parts`` is another training."""
    rows_per_shard: PosInt = 65536
    """Rows per shard file; the store needs at least ``parts`` shards."""
    buffer_rows: PosInt | None = None
    """Rows of each part's shuffling buffer (``None``: twice the larger of a shard and a batch)."""

    @model_validator(mode="after")
    def _parts_first(self) -> StoreSpec:
        if self.parts is None and self.model_fields_set - {"parts"}:
            raise ValueError("rows_per_shard and buffer_rows need parts (the store is used only with parts)")
        return self


class ExperimentSpec(_Frozen):
    """What one experiment computes (module docstring)."""

    name: str
    """The run's name (default output folder ``runs/<name>``)."""
    description: str = ""
    """One line of text about the experiment."""
    seeds: PosInt = 5
    """Number of KAEs fitted, with seeds 0..N-1."""
    data: DataSpec
    """The ``[data]`` table."""
    network: NetworkSpec
    """The ``[network]`` table."""
    span: SpanSpec = Field(default_factory=SpanSpec)
    """The ``[span]`` table."""
    preprocessing: PreprocessingSpec = Field(default_factory=PreprocessingSpec)
    """The ``[preprocessing]`` table."""
    kae: KAESpec
    """The ``[kae]`` table."""
    editing: EditingSpec = Field(default_factory=EditingSpec)
    """The ``[editing]`` table."""
    topology: TopologySpec = Field(default_factory=TopologySpec)
    """The ``[topology]`` table."""
    store: StoreSpec = Field(default_factory=StoreSpec)
    """The ``[store]`` table: train the KAEs from an activation store (whole-sample networks only)."""

    @model_validator(mode="after")
    def _token_rules(self) -> ExperimentSpec:
        kind, source = self.network.kind, self.data.source
        if kind in TOKEN_KINDS and self.store.parts is not None:
            raise ValueError("[store] applies to whole-sample networks only, not to sequence networks")
        if kind not in TOKEN_KINDS:
            if source in TOKEN_KINDS.values():
                raise ValueError(
                    f"data.source {source!r} needs a sequence network (network.kind "
                    f"{'/'.join(k for k, v in TOKEN_KINDS.items() if v == source)})"
                )
            if self.span.positions is not None or self.span.fit_sequences is not None:
                raise ValueError(
                    "span.positions and span.fit_sequences apply to sequence networks only (modadd, chargpt)"
                )
            return self
        if source != TOKEN_KINDS[kind]:
            raise ValueError(
                f"network.kind {kind!r} is trained on data.source {TOKEN_KINDS[kind]!r}, not {source!r}"
            )
        if (
            self.span.layer_j is None
            or "span" not in self.model_fields_set
            or "layer_i" not in self.span.model_fields_set
        ):
            raise ValueError(
                f"network.kind {kind!r} needs span.layer_i and span.layer_j (e.g. "
                "'blocks.0.resid_mid' and 'blocks.0.resid_post')"
            )
        if self.topology.enabled:
            raise ValueError(
                "topology is not defined for sequence networks yet: set [topology] enabled = false"
            )
        if self.editing.classes and self.editing.method == "memit":
            raise ValueError(
                "editing a sequence network takes method 'emmet-kmeans', 'emmet' or "
                "'alphaedit' ('memit' tunes its lam on whole-sample logits)"
            )
        return self

    @property
    def per_token(self) -> bool:
        """Whether the network is a sequence model studied per token."""
        return self.network.kind in TOKEN_KINDS

    def to_dict(self) -> dict[str, Any]:
        """Plain data, without the fields left at their defaults (what a spec file holds)."""
        return self.model_dump(exclude_unset=True, exclude_none=True, mode="json")

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def replace(self, **changes: Any) -> ExperimentSpec:
        """A checked copy with some top-level or nested (``"kae.overrides"``) fields changed."""
        data = self.to_dict()
        for key, value in changes.items():
            *path, last = key.split(".")
            node = data
            for part in path:
                node = node.setdefault(part, {})
            node[last] = value
        return spec_from_dict(data, where=f"spec {self.name!r}")


def _describe(err: dict) -> str:
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"{field}: unknown field"
    if err["type"] == "missing":
        return f"{field}: missing"
    return f"{field} = {value!r}: {err['msg']}"


def spec_from_dict(data: dict, where: str = "spec") -> ExperimentSpec:
    """Check ``data`` against :class:`ExperimentSpec`; errors name each bad field and value."""
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        lines = "; ".join(_describe(e) for e in exc.errors(include_url=False))
        raise InputError(f"{where}: {lines}") from None


def builtin_specs() -> list[str]:
    """Names of the specs that ship with koopmanlens (``koopmanlens/specs/*.toml``)."""
    folder = resources.files("koopmanlens") / "specs"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_spec(name_or_path: str | Path) -> tuple[ExperimentSpec, Path | None]:
    """A built-in spec by name, or a TOML file: (spec, the file's folder, ``None`` for built-ins).
    Relative paths in a spec (data files, weights) are read against that folder."""
    text, where, base = _read(name_or_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{where} is not valid TOML: {exc}") from None
    return spec_from_dict(data, where=where), base


def _read(name_or_path: str | Path) -> tuple[str, str, Path | None]:
    name = str(name_or_path)
    if name in builtin_specs():
        return (resources.files("koopmanlens") / "specs" / f"{name}.toml").read_text(), name, None
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        raise InputError(
            f"unknown spec {name!r}: not a built-in ({', '.join(builtin_specs())}) nor a .toml file"
        )
    try:
        return path.read_text(), str(path), path.resolve().parent
    except OSError as exc:
        raise InputError(f"cannot read spec file {path}: {exc.strerror or exc}") from None


def save_spec(spec: ExperimentSpec, path: str | Path) -> Path:
    """Write ``spec`` as TOML (atomically); ``load_spec`` gives it back equal."""
    from koopmanlens.io import atomic_write_bytes

    atomic_write_bytes(path, spec.to_toml().encode())
    return Path(path)
