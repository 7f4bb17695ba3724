"""Issue 7, item 1: a KAE between two named layers of a convolutional residual network (the
runnable example examples/conv_resnet_mnist.py), with maps of different shapes at i and j."""

from __future__ import annotations

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
