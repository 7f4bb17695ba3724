"""Typed schemas of the JSON files in a run folder, checked on every load (pydantic).

A file that a user or another program edited, truncated or planted gives one
:class:`~koopmanlens.errors.ArtifactError` naming the file, the field, what was found and what is
allowed, instead of a traceback somewhere downstream. Unknown extra keys are kept (newer versions
may add some); the keys that koopmanlens reads are checked for type and range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from koopmanlens.errors import ArtifactError

Frac = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
NonNeg = Annotated[int, Field(ge=0)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Name = Annotated[str, Field(max_length=500)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class RunInfo(_Model):
    """``run.json`` of a complete run."""

    format: Literal["koopmanlens-run"]
    version: Annotated[int, Field(ge=1, le=2)]
    complete: Literal[True]
    dataset: Name = "custom"
    layer_i: Name
    layer_j: Name
    seeds: Annotated[list[NonNeg], Field(min_length=1, max_length=100_000)]
    class_names: list[Name] | None = None
    quick: bool = False
    preset: Name | None = None
    subset: Annotated[int, Field(ge=1)] | None = None
    width: Annotated[int, Field(ge=1)] | None = None
    data_dir: str | None = None

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must not repeat")
        return v


class MeanSd(_Model):
    mean: Frac | None
    sd: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = 0.0


class SeedRow(_Model):
    seed: NonNeg
    test_top1: Frac | None
    test_macro: Frac | None
    agreement: Frac | None = None


class KaeBlock(_Model):
    seeds: Annotated[list[NonNeg], Field(min_length=1)]
    test_top1: MeanSd
    test_macro: MeanSd
    agreement: MeanSd | None = None
    per_seed: Annotated[list[SeedRow], Field(min_length=1)]


class SubjectBlock(_Model):
    test_top1: Frac | None
    test_macro: Frac | None


class EditRow(_Model):
    forget: NonNeg
    into: NonNeg
    target_before: Frac | None
    target_after: Frac | None
    others_before: Frac | None
    others_after: Frac | None
    seconds: Annotated[float, Field(ge=0.0)] | None = None
    target_before_sd: Finite | None = 0.0
    target_after_sd: Finite | None = 0.0
    others_before_sd: Finite | None = 0.0
    others_after_sd: Finite | None = 0.0


class EditingBlock(_Model):
    method: Name
    per_class: list[EditRow]


NonNegFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class Tracking(_Model):
    """Does the KAE step sequence track the layer sequence (topology_stage.tracking_summary)."""

    matched_mean: NonNegFloat
    other_mean: NonNegFloat | None = None
    ratio: NonNegFloat | None = None
    nearest_is_matched: Frac
    nearest_offset: NonNegFloat
    nearest_spearman: Finite | None = None
    nearest_layer: list[NonNeg]


class Gap(_Model):
    """A decoded KAE step beside the layer it should equal (step 0 vs layer i, step k vs layer j)."""

    layer: Name
    step: NonNeg
    layer_beta0: NonNeg
    step_beta0: NonNeg
    distance_beta0: NonNegFloat
    distance_beta1: NonNegFloat | None = None


class TopologyBlock(_Model):
    eps: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    n_points: NonNeg
    layers: Annotated[list[Name], Field(min_length=1)]
    layer_beta0: Annotated[list[NonNeg], Field(min_length=1)]
    layer_spearman: Finite | None = None
    kae_steps: Annotated[list[NonNeg], Field(min_length=1)]
    kae_beta0: Annotated[list[NonNeg], Field(min_length=1)]
    kae_spearman: Finite | None = None
    eps_rule: Name | None = None
    kae_seed: NonNeg | None = None
    # Betti curves over one pooled eps grid (docs/topology.md); absent in runs made before them
    grid_rule: Name | None = None
    eps_grid: Annotated[list[NonNegFloat], Field(min_length=2)] | None = None
    layer_span: Annotated[list[NonNeg], Field(min_length=2, max_length=2)] | None = None
    layer_beta0_curves: list[list[NonNeg]] | None = None
    kae_beta0_curves: list[list[NonNeg]] | None = None
    layer_beta1_curves: list[list[NonNeg]] | None = None
    kae_beta1_curves: list[list[NonNeg]] | None = None
    beta1_points: NonNeg | None = None
    step_layer_distance_beta0: list[list[NonNegFloat]] | None = None
    step_layer_distance_beta1: list[list[NonNegFloat]] | None = None
    layer_layer_distance_beta0: list[list[NonNegFloat]] | None = None
    matched_layer: list[NonNeg] | None = None
    tracking_beta0: Tracking | None = None
    tracking_beta1: Tracking | None = None
    reconstruction_gap: Gap | None = None
    prediction_gap: Gap | None = None


class BaselineRow(_Model):
    """One row of the ``baselines`` block (docs/baselines.md)."""

    name: Name
    test_top1: Frac | None
    test_macro: Frac | None
    agreement: Frac | None = None
    explained_variance: Annotated[float, Field(le=1.0, allow_inf_nan=False)] | None = None
    fit_seconds: NonNegFloat | None = None
    params: NonNeg | None = None


class BaselinesBlock(_Model):
    """Identity, linear, EDMD and MLP baselines beside the KAE, on the run's preprocessing."""

    split: Name = "test"
    space: Name | None = None
    rows: Annotated[list[BaselineRow], Field(min_length=1)]


class EditBaselineRow(EditRow):
    """One row of the ``editing_baselines`` block (docs/baselines.md): an edit method or fine-tuning."""

    method: Name
    lr: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None
    epochs: Annotated[int, Field(ge=1)] | None = None


class EditBaselinesBlock(_Model):
    """AlphaEdit and fine-tuning the layers after j beside the run's edit, on the same classes."""

    split: Name = "test"
    rows: Annotated[list[EditBaselineRow], Field(min_length=1)]


class Metrics(_Model):
    """``metrics.json``: the keys the tables and the report read."""

    dataset: Name
    split: Name = "test"
    n_test: NonNeg | None = None
    subject: SubjectBlock
    kae: KaeBlock
    editing: EditingBlock | None = None
    topology: TopologyBlock | None = None
    baselines: BaselinesBlock | None = None
    editing_baselines: EditBaselinesBlock | None = None
    timing_s: dict[str, Finite | list[Finite] | None] = Field(default_factory=dict)


class LMSplice(_Model):
    """One splice's LM metrics (:func:`koopmanlens.lm_metrics.compare_row_maps`)."""

    ce: Finite
    kl: Finite
    accuracy: Frac
    agreement: Frac
    explained_variance: Finite | None = None


class MeanSdAny(_Model):
    mean: Finite
    sd: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class LMSeedRow(LMSplice):
    seed: NonNeg


class LMBlock(_Model):
    """``metrics["lm"]`` of a sequence-model run (:func:`koopmanlens.lm_run.lm_block`)."""

    split: Name
    n_scored_tokens: Annotated[int, Field(ge=1)]
    clean: LMSplice
    kae: dict[Name, MeanSdAny]
    per_seed: Annotated[list[LMSeedRow], Field(min_length=1)]
    baselines: dict[Name, LMSplice]
    ablations: dict[Name, LMSplice]


class LMMetrics(_Model):
    """``metrics.json`` of a sequence-model run (``kind = "lm"``)."""

    dataset: Name
    kind: Literal["lm"]
    split: Name = "test"
    network: dict
    lm: LMBlock
    editing: dict | None = None
    fourier: dict | None = None
    timing_s: dict[str, Finite | list[Finite] | None] = Field(default_factory=dict)


class EditMeta(_Model):
    forget: NonNeg
    into: NonNeg
    method: Name


class ViewsMeta(_Model):
    """``views.json``: names of the stacked views in ``views.safetensors``."""

    layers: Annotated[list[Name], Field(min_length=1)]
    steps: Annotated[list[NonNeg], Field(min_length=1)]
    n_points: NonNeg
    class_names: Annotated[list[Name], Field(min_length=1)]
    edit: EditMeta | None = None


def _message(path: Path | str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = repr(err.get("input"))
        got = got if len(got) <= 60 else got[:57] + "..."
        parts.append(f"{loc}: {err['msg']} (found {got})")
    more = f"; and {exc.error_count() - 3} more problems" if exc.error_count() > 3 else ""
    return f"{path} is not a valid koopmanlens file: " + "; ".join(parts) + more


def validate(model: type[_Model], obj: object, path: Path | str) -> dict:
    """Check ``obj`` (a parsed JSON file) against ``model``; return it unchanged, or raise
    :class:`ArtifactError` naming the file, the field, the value found and the rule."""
    try:
        model.model_validate(obj)
    except ValidationError as exc:
        raise ArtifactError(_message(path, exc)) from None
    return obj  # type: ignore[return-value]


Size = Annotated[int, Field(ge=1, le=1_000_000)]


class PreprocessingFile(_Model):
    """``preprocessing.json``."""

    q: Size | None = None


class KaeModel(_Model):
    dim: Size
    hidden: Size
    observables: Size
    k: Size
    expm_method: Literal["taylor", "torch"] = "taylor"


class FitFields(_Model):
    """The ``fit`` block of ``kae/seed-<s>.json`` and ``subject.json``: a
    :class:`~koopmanlens.fit_record.FitRecord` but its history (``kae/seed-<s>.log.jsonl``) and its
    config (``train`` / ``config``)."""

    best_epoch: Annotated[int, Field(ge=0)] | None = None
    rollbacks: Annotated[int, Field(ge=0)] = 0
    seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    precision: str | None = None


class KaeFile(_Model):
    """``kae/seed-<s>.json``: the model's shape (the training config is kept as written) and, from
    runs written with a fit record, ``fit``."""

    model: KaeModel
    train: dict | None = None
    fit: FitFields | None = None
