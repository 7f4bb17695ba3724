"""Experiments as data (issue 14): specs load, check, round-trip and run; a user's own network and
data run end to end from a spec file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_reliability import strip_timings
from typer.testing import CliRunner

from koopmanlens.cli import app
from koopmanlens.errors import InputError
from koopmanlens.experiment import build_data, kae_spec_config, list_layers, subject_spec_config
from koopmanlens.kae import kae_config
from koopmanlens.spec import ExperimentSpec, builtin_specs, load_spec, save_spec, spec_from_dict
from koopmanlens.subject import subject_config

runner = CliRunner()


def test_builtin_specs_are_the_documented_ones():
    assert builtin_specs() == [
        "chargpt", "chargpt-quick", "mnist", "mnist-fast", "mnist-lean", "modadd", "modadd-quick",
        "yinyang", "yinyang-paper", "yinyang-quick",
    ]  # fmt: skip


@pytest.mark.parametrize("name", builtin_specs())
def test_spec_round_trips(name, tmp_path):
    spec, base = load_spec(name)
    assert base is None
    path = save_spec(spec, tmp_path / f"{name}.toml")
    again, folder = load_spec(path)
    assert again == spec and folder == tmp_path.resolve()
    assert again.to_toml() == spec.to_toml()  # file -> spec -> file: the same text


def test_builtin_specs_hold_the_presets_reproduce_used():
    """The spec files are the presets `reproduce` ran before specs existed, field for field."""
    expect = {
        "yinyang": (subject_config("yinyang"), kae_config("yinyang"), None),
        "yinyang-paper": (subject_config("yinyang-paper"), kae_config("yinyang-paper"), None),
        "yinyang-quick": (
            subject_config("yinyang-paper", epochs=40),
            kae_config("yinyang", epochs=60, batch_size=256),
            None,
        ),
        "mnist": (subject_config("mnist"), kae_config("mnist"), None),
        "mnist-fast": (
            subject_config("mnist", epochs=6, batch_size=256),
            kae_config("mnist", hidden=256, observables=160, epochs=50, weights=(1.0, 1.0, 10.0, 1e-3)),
            128,
        ),
        # chosen on validation by benchmarks/choose_mnist_lean.py (round 3: the paper's subject recipe)
        "mnist-lean": (
            subject_config("mnist"),
            kae_config("mnist", hidden=384, observables=240, epochs=50, weights=(1.0, 1.0, 10.0, 1e-3)),
            192,
        ),
    }
    for name, (subject, kae, q) in expect.items():
        spec, _ = load_spec(name)
        assert (subject_spec_config(spec), kae_spec_config(spec), spec.preprocessing.q) == (
            subject,
            kae,
            q,
        ), name
    assert load_spec("mnist")[0].editing.max_target_accuracy == 0.005  # chosen on validation
    assert load_spec("yinyang")[0].editing.classes == [0, 1, 2]


def test_run_and_reproduce_give_the_same_metrics(quick_run, tmp_path):
    res = runner.invoke(
        app, ["run", "yinyang-quick", "--seeds", "1", "--out", str(tmp_path / "r"), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    a = strip_timings(json.loads((quick_run / "metrics.json").read_text()))
    b = strip_timings(json.loads((tmp_path / "r" / "metrics.json").read_text()))
    assert a == b
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["spec"] == load_spec("yinyang-quick")[0].replace(seeds=1).to_dict()


GOOD = {
    "name": "t",
    "data": {"source": "yinyang", "n_train": 10},
    "network": {"kind": "resmlp", "preset": "yinyang"},
    "kae": {"preset": "yinyang"},
}


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("name", 3, "name = 3"),
        ("seeds", 0, "seeds = 0"),
        ("seeds", "five", "seeds = 'five'"),
        ("colour", "red", "colour: unknown field"),
        ("data.source", "imagenet", "data.source = 'imagenet'"),
        ("data.n_train", -5, "data.n_train = -5"),
        ("data.subset", 100, "do not apply to source 'yinyang'"),
        ("data.validation", -1, "data.validation = -1"),
        ("data.class_names", "abc", "data.class_names = 'abc'"),
        ("network.kind", "transformer", "network.kind = 'transformer'"),
        ("network.preset", None, "kind 'resmlp' needs preset"),
        ("network.seed", -1, "network.seed = -1"),
        ("network.overrides", [1], "network.overrides = [1]"),
        ("network.factory", "nomodule", "kind 'resmlp' needs preset"),
        ("span.layer_i", 4, "span.layer_i = 4"),
        ("span.colour", 4, "span.colour: unknown field"),
        ("preprocessing.q", 0, "preprocessing.q = 0"),
        ("kae.preset", None, "kae.preset = None"),
        ("kae.overrides", "x", "kae.overrides = 'x'"),
        ("editing.classes", [-1], "editing.classes.0 = -1"),
        ("editing.method", "rome", "editing.method = 'rome'"),
        ("editing.max_target_accuracy", 1.5, "editing.max_target_accuracy = 1.5"),
        ("topology.enabled", "maybe", "topology.enabled = 'maybe'"),
        ("store.parts", 0, "store.parts = 0"),
        ("store.rows_per_shard", 0, "store.rows_per_shard = 0"),
        ("store.buffer_rows", -1, "store.buffer_rows = -1"),
        ("store.colour", 1, "store.colour: unknown field"),
        ("description", 1, "description = 1"),
    ],
)
def test_every_field_refuses_a_bad_value(path, value, needle):
    data = json.loads(json.dumps(GOOD))
    *parts, last = path.split(".")
    node = data
    for p in parts:
        node = node.setdefault(p, {})
    node[last] = value
    with pytest.raises(InputError) as err:
        spec_from_dict(data)
    assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("network", "needle"),
    [
        ({"kind": "factory", "factory": "x:y"}, "needs factory = 'package.module:function' and weights"),
        (
            {"kind": "factory", "factory": "nocolon", "weights": "w.safetensors"},
            "must read 'package.module:function'",
        ),
        ({"kind": "factory", "factory": "a:b", "weights": "w", "preset": "yinyang"}, "needs factory"),
    ],
)
def test_factory_network_fields(network, needle):
    with pytest.raises(InputError, match="network"):
        spec_from_dict({**GOOD, "network": network})
    with pytest.raises(InputError) as err:
        spec_from_dict({**GOOD, "network": network})
    assert needle in str(err.value)


def test_bad_overrides_and_unknown_presets_are_named():
    spec = spec_from_dict(
        {**GOOD, "network": {"kind": "resmlp", "preset": "yinyang", "overrides": {"wdth": 3}}}
    )
    with pytest.raises(InputError, match=r"network\.overrides.*wdth"):
        subject_spec_config(spec)
    spec = spec_from_dict({**GOOD, "kae": {"preset": "yinyang", "overrides": {"hiden": 3}}})
    with pytest.raises(InputError, match=r"kae\.overrides.*hiden"):
        kae_spec_config(spec)
    spec = spec_from_dict({**GOOD, "kae": {"preset": "nope"}})
    with pytest.raises(InputError, match="unknown KAE preset 'nope'"):
        kae_spec_config(spec)


def test_unknown_spec_and_bad_files(tmp_path):
    res = runner.invoke(app, ["run", "no-such-spec"])
    assert res.exit_code == 2 and "unknown spec 'no-such-spec'" in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    res = runner.invoke(app, ["spec", str(bad)])
    assert res.exit_code == 2 and "is not valid TOML" in res.output
    bad.write_text('name = "x"\nseeds = 2\n')
    res = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "data: missing" in res.output
    assert not (tmp_path / "out").exists()  # nothing written but the refusal


def test_specs_and_spec_commands_print_the_builtins():
    res = runner.invoke(app, ["specs"])
    assert res.exit_code == 0
    for name in builtin_specs():
        assert name in res.output
    res = runner.invoke(app, ["spec", "mnist-fast"])
    assert res.exit_code == 0
    assert spec_from_dict(__import__("tomllib").loads(res.output)) == load_spec("mnist-fast")[0]


# --- a user's own network and data ----------------------------------------------------------------


@pytest.fixture(scope="module")
def user_spec(tmp_path_factory) -> Path:
    """A spec file naming tests/user_model.py:build with trained weights and .npz / .safetensors data."""
    from user_model import build

    folder = tmp_path_factory.mktemp("user")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(900, 6, generator=g)
    y = (x[:, 0] > 0.4).long() + (x[:, 1] > 0.4).long()
    net = build()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[:600]), y[:600]).backward()
        opt.step()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / "weights.safetensors")
    np.savez(folder / "train.npz", x=x[:600].numpy(), y=y[:600].numpy())
    np.savez(folder / "val.npz", x=x[600:700].numpy(), y=y[600:700].numpy())
    save_file({"x": x[700:], "y": y[700:]}, folder / "test.safetensors")
    spec = {
        "name": "user",
        "seeds": 1,
        "data": {"source": "files", "train": "train.npz", "val": "val.npz", "test": "test.safetensors",
                 "class_names": ["low", "mid", "high"]},
        "network": {"kind": "factory", "factory": "user_model:build", "weights": "weights.safetensors"},
        "span": {"layer_i": "stem", "layer_j": "top"},
        "kae": {"preset": "yinyang",
                "overrides": {"hidden": 32, "observables": 24, "epochs": 30, "batch_size": 128}},
        "editing": {"classes": [2]},
    }  # fmt: skip
    return save_spec(spec_from_dict(spec), folder / "user.toml")


def test_user_network_and_data_run_end_to_end(user_spec, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(user_spec), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["layers"] == {"i": "stem", "j": "top"} and m["n_test"] == 200
    assert m["config"]["subject"] is None
    assert m["kae"]["agreement"]["mean"] > 0.8
    assert m["editing"]["per_class"][0]["forget"] == 2
    assert m["topology"]["layers"] == ["stem", "top"]
    assert (out / "report.html").exists()
    # a saved user run reloads its network through the factory: show, edit and topology work
    for args in (["show", str(out)], ["edit", str(out), "--forget", "1"], ["topology", str(out)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args, res.output)


def test_layers_lists_a_user_networks_modules(user_spec):
    res = runner.invoke(app, ["layers", str(user_spec)])
    assert res.exit_code == 0, res.output
    for name in ("stem", "middle", "top", "head"):
        assert name in res.output
    from user_model import build

    rows = dict(list_layers(build(), torch.zeros(2, 6)))
    assert rows["stem"] == (16,) and rows["top"] == (12,) and rows["head"] == (3,)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"network.factory": "no_such_module:build"}, "cannot be imported"),
        ({"network.factory": "user_model:nothing"}, "cannot be imported"),
        ({"network.factory": "user_model:not_a_module"}, "returned a int, not an nn.Module"),
        ({"network.weights": "missing.safetensors"}, "does not exist"),
        ({"span.layer_j": "nolayer"}, "no module named 'nolayer'"),
        ({"data.train": "nofile.npz"}, "does not exist"),
    ],
)
def test_user_spec_bad_input(user_spec, tmp_path, change, needle):
    spec, _ = load_spec(user_spec)
    bad = save_spec(spec.replace(**change), user_spec.parent / f"bad-{abs(hash(needle))}.toml")
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(bad), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.output.split()), res.output


def test_weights_that_do_not_fit_the_factory_are_refused(user_spec, tmp_path):
    save_file({"stem.0.weight": torch.zeros(3, 3)}, user_spec.parent / "wrong.safetensors")
    spec, _ = load_spec(user_spec)
    bad = save_spec(spec.replace(**{"network.weights": "wrong.safetensors"}), user_spec.parent / "wrong.toml")
    res = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 2
    assert "wrong.safetensors" in " ".join(res.output.split())


def test_files_data_checks(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 2)), z=np.zeros(4))
    spec = spec_from_dict({**GOOD, "data": {"source": "files", "train": "a.npz", "test": "a.npz"}})
    with pytest.raises(InputError, match=r"lacks the arrays \['y'\]"):
        build_data(spec, tmp_path)
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 2)), y=np.zeros(3))
    with pytest.raises(InputError, match="x must be"):
        build_data(spec, tmp_path)
    np.savez(tmp_path / "a.npz", x=np.array([[0.0, np.nan]] * 4), y=np.zeros(4))
    with pytest.raises(InputError, match="NaN"):
        build_data(spec, tmp_path)
    (tmp_path / "a.npz").write_bytes(b"not a zip")
    with pytest.raises(Exception, match="cannot read data file"):
        build_data(spec, tmp_path)


def test_test_file_is_sealed_in_choosers(tmp_path):
    import koopmanlens as kl

    np.savez(tmp_path / "a.npz", x=np.zeros((4, 2)), y=np.zeros(4, dtype=np.int64))
    spec = spec_from_dict({**GOOD, "data": {"source": "files", "train": "a.npz", "test": "a.npz"}})
    with kl.data.seal("test"), pytest.raises(InputError, match="sealed"):
        build_data(spec, tmp_path)
    with kl.data.seal("test"):
        assert build_data(spec, tmp_path, test=False)["test"] is None


def test_spec_is_an_experiment_spec():
    assert isinstance(load_spec("yinyang")[0], ExperimentSpec)
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        load_spec("yinyang")[0].seeds = 3  # type: ignore[misc]
