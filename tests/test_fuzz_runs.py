"""Issue 12: random mutations of a run folder's files (run.json, metrics.json, views.json, the views
and KAE tensors) never give a traceback: every command exits 0 or with the project's own error (2)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from koopmanlens.cli import app

runner = CliRunner()

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    # small, or absurd (fails at once): no sizes in between that would allocate gigabytes
    st.integers(-1000, 10**4),
    st.sampled_from([10**15, -(10**15)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["<script>x</script>", "[/x]", "[link=https://e]y[/link]", "../..", ""]),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(obj, prefix=()):
    """Every (path, container) place in a JSON value, to pick one to mutate."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:5]):
            yield from _paths(v, (*prefix, i))


def _mutate_json(obj, data):
    places = [p for p in _paths(obj) if p]
    path = data.draw(st.sampled_from(places))
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(json_value)
    return obj


def _mutate_tensors(path: Path, data) -> None:
    tensors = load_file(path)
    name = data.draw(st.sampled_from(sorted(tensors)))
    kind = data.draw(st.sampled_from(["nan", "shape", "dtype", "drop"]))
    t = tensors[name]
    if kind == "nan" and t.is_floating_point() and t.numel():
        t = t.clone()
        t.view(-1)[0] = float("nan")
    elif kind == "shape":
        t = torch.zeros(data.draw(st.integers(0, 4)), 2)
    elif kind == "dtype":
        t = t.to(torch.int64 if t.is_floating_point() else torch.float32)
    else:
        del tensors[name]
        save_file(tensors, path)
        return
    tensors[name] = t.contiguous()
    save_file(tensors, path)


def _check(res) -> None:
    if res.exit_code not in (0, 2) or (
        res.exception is not None and not isinstance(res.exception, SystemExit)
    ):
        raise AssertionError(f"exit {res.exit_code}: {res.exception!r}\n{res.output}")
    assert "Traceback" not in res.output


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), name=st.sampled_from(["run.json", "metrics.json"]))
def test_mutated_json_never_gives_a_traceback_in_show(quick_run, data, name):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(shutil.copytree(quick_run, Path(tmp) / "run"))
        obj = _mutate_json(json.loads((run / name).read_text()), data)
        (run / name).write_text(json.dumps(obj))
        _check(runner.invoke(app, ["show", str(run)]))


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # each example runs a report: no long shrinking
)
@given(
    data=st.data(),
    name=st.sampled_from(
        [
            "run.json",
            "metrics.json",
            "views.json",
            "views.safetensors",
            "kae/seed-0.safetensors",
            "kae/seed-0.json",
            "subject.json",
            "preprocessing.json",
            "preprocessing.safetensors",
        ]
    ),
)
def test_mutated_files_never_give_a_traceback_in_report(quick_run, data, name):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(shutil.copytree(quick_run, Path(tmp) / "run"))
        if name.endswith(".json"):
            obj = _mutate_json(json.loads((run / name).read_text()), data)
            (run / name).write_text(json.dumps(obj))
        else:
            _mutate_tensors(run / name, data)
        if not name.startswith(("views", "run.json", "metrics.json")):
            (run / "views.safetensors").unlink()  # the report recomputes its views from the model files
        _check(runner.invoke(app, ["report", str(run)]))
