"""The run folder of a sequence-model spec (:mod:`koopmanlens.lm_run`): written with the same files
as any run (``subject.safetensors``, ``preprocessing.*``, ``kae/seed-N.*``, ``metrics.json``,
``run.json`` last) and reopened from them: the network is rebuilt from the spec stored in
``run.json`` (a built-in testbed: no code is imported from the folder) and its weights loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from koopmanlens.errors import ArtifactError
from koopmanlens.kae import KoopmanAE
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.spec import ExperimentSpec
from koopmanlens.tokens import Positions, TokenSurrogate

if TYPE_CHECKING:
    from koopmanlens.lm_run import TokenFit


def write_lm_run(
    out: Path, run_id: str, experiment: dict, spec: ExperimentSpec, fit: TokenFit, metrics: dict, report: bool
) -> None:
    """Every artifact of the run into ``out`` (held), ``run.json`` complete last; then report.html."""
    from koopmanlens.runs import write_run_files

    info = {
        "dataset": spec.data.source,
        "layer_i": fit.layer_i,
        "layer_j": fit.layer_j,
        "per_token": True,
        "positions": "all" if fit.positions is None else fit.positions,
        "spec_name": spec.name,
        "spec": spec.to_dict(),
    }
    write_run_files(out, fit.network.cpu(), fit.preprocessor, fit.kaes, metrics, info, run_id, experiment)
    if report:
        from koopmanlens.report.lm import write_lm_report
        from koopmanlens.runs import read_run_info

        write_lm_report(out, metrics, read_run_info(out))


@dataclass
class LMRun:
    """A reopened sequence-model run: its spec, network, preprocessing, one KAE per seed, metrics."""

    path: Path
    spec: ExperimentSpec
    network: nn.Module
    preprocessor: PairPreprocessor
    kaes: dict[int, KoopmanAE]
    positions: Positions
    metrics: dict = field(default_factory=dict)

    def surrogate(self, seed: int | None = None) -> TokenSurrogate:
        """The :class:`TokenSurrogate` of one seed (default: the first)."""
        seed = min(self.kaes) if seed is None else seed
        if seed not in self.kaes:
            raise ArtifactError(f"run {self.path} has no KAE for seed {seed}; it has {sorted(self.kaes)}")
        li, lj = self.spec.span.layer_i, self.spec.span.layer_j or ""
        return TokenSurrogate(self.network, li, lj, self.preprocessor, self.kaes[seed], self.positions)


def is_lm_run(info: dict) -> bool:
    """Whether a run.json is a sequence-model run's."""
    return bool(info.get("per_token"))


def load_lm_run(run_dir: str | Path) -> LMRun:
    """Reopen a sequence-model run folder (:class:`ArtifactError` for anything else)."""
    from koopmanlens.errors import InputError
    from koopmanlens.io import read_json
    from koopmanlens.lm_run import span_positions
    from koopmanlens.lm_testbeds import build_network
    from koopmanlens.runs import load_kae, load_module_state, load_preprocessor, read_run_info
    from koopmanlens.spec import spec_from_dict

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    if not is_lm_run(info):
        raise ArtifactError(f"{run_dir} is not a sequence-model run; open it with koopmanlens.load_run")
    try:
        spec = spec_from_dict(info.get("spec"), where=f"{run_dir}/run.json")
    except InputError as exc:
        raise ArtifactError(str(exc)) from None
    network = build_network(spec)
    load_module_state(network, run_dir / "subject.safetensors")
    kaes = {int(s): load_kae(run_dir, int(s)) for s in info["seeds"]}
    metrics = read_json(run_dir / "metrics.json")
    return LMRun(
        run_dir, spec, network.eval(), load_preprocessor(run_dir), kaes, span_positions(spec), metrics
    )
