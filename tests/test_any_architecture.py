"""Issue 7, item 1: a KAE between two named layers of a convolutional residual network (the
runnable example examples/conv_resnet_mnist.py), with maps of different shapes at i and j."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import torch

import koopmanlens as kl
from koopmanlens.subject import evaluate_classifier

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "conv_resnet_mnist.py"


def _example():
    spec = importlib.util.spec_from_file_location("conv_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_conv_resnet_surrogate_and_edit(mnist_dir):
    ex = _example()
    train = kl.data.mnist("train", mnist_dir).subset(slice(0, 8000))
    test = kl.data.mnist("test", mnist_dir).subset(slice(0, 1000))
    net = ex.train_convnet(train, epochs=4)
    reps = kl.capture.capture(net, test.x[:5], ["stem", "stage2"], flatten=False)
    assert reps["stem"].shape == (5, 8, 14, 14) and reps["stage2"].shape == (5, 16, 7, 7)
    sur = kl.Surrogate.fit(
        net,
        train,
        "stem",
        "stage2",
        preset="mnist",
        q=48,
        seed=0,
        progress=False,
        hidden=128,
        observables=64,
        epochs=25,
        threads=None,
    )
    assert sur.preprocessor.dim_ == 48
    net_acc = evaluate_classifier(net, test)["top1"]
    ev = sur.evaluate(test)
    assert net_acc > 0.7
    assert ev["top1"] > net_acc - 0.05  # the full example reaches 0.14 points (README)
    edit = kl.editing.unlearn_class(sur, train, forget=3)
    after = edit.apply(sur).evaluate(test)
    assert after["per_class"][3] < ev["per_class"][3] / 2
    assert torch.equal(edit.revert(sur).logits(test.x[:10]), sur.logits(test.x[:10]))


def test_conv_resnet_from_a_spec(mnist_dir, tmp_path):
    """The same network as a user would bring it: examples/conv_resnet/ (model.py's factory, the
    weights train.py writes, spec.toml) run by `koopmanlens run`, shrunk to seconds."""
    import json
    import shutil
    import sys

    from typer.testing import CliRunner

    from koopmanlens.cli import app
    from koopmanlens.spec import load_spec, save_spec

    folder = EXAMPLE.parent / "conv_resnet"
    shutil.copy(folder / "model.py", tmp_path / "model.py")
    spec, _ = load_spec(folder / "spec.toml")
    small = spec.replace(
        **{"data.subset": 1500, "kae.overrides": {"hidden": 64, "observables": 48, "epochs": 4}}
    )
    small = small.replace(**{"preprocessing.q": 32})
    path = save_spec(small, tmp_path / "spec.toml")
    sys.path.insert(0, str(folder))
    try:
        train_mod = importlib.import_module("train")
        weights = train_mod.main(path, str(mnist_dir), epochs=1)
    finally:
        sys.path.remove(str(folder))
    assert weights == tmp_path / "conv_resnet.safetensors"
    res = CliRunner().invoke(app, ["layers", str(path), "--data-dir", str(mnist_dir)])
    assert res.exit_code == 0 and "stage2.conv1" in res.output, res.output
    out = tmp_path / "run"
    args = ["run", str(path), "--data-dir", str(mnist_dir), "--out", str(out), "--no-progress"]
    res = CliRunner().invoke(app, [*args, "--no-report"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["layers"] == {"i": "stem", "j": "stage2"} and m["n_test"] == 250
    assert m["editing"]["per_class"][0]["forget"] == 3
