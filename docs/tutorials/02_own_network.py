"""Tutorial 2: bring your own network and data with a spec file."""

# %% [markdown]
# # Tutorial 2: your own network and data
#
# koopmanlens works on any `torch.nn.Module`: layers are addressed by their `named_modules()`
# names and captured with forward hooks, so nothing in your network needs to know about it. To run
# a whole experiment (fit the KAEs, evaluate on the test split, edit, measure the topology, write a
# run folder) you describe it in a **spec file** that names
#
# - your data: `.npz` (or `.safetensors`) files holding `x` (n, ...) and `y` (n,) per split;
# - your network: a factory `"module:function"` that returns the `nn.Module`, and its weights as a
#   safetensors state dict (never pickle);
# - the two layers, the KAE, the edits.
#
# This tutorial makes all three files in a fresh folder, `my-experiment/`: a small MLP on a toy
# 3-class problem, trained in a few seconds. With your own network you would skip the training and
# save your weights the same way. `examples/conv_resnet/` in the repository is the same for a
# convolutional ResNet on MNIST.

# %%
import runpy
import textwrap
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from koopmanlens.cli import app
from koopmanlens.experiment import RunOptions, build_data, build_factory_network, list_layers, run_experiment
from koopmanlens.spec import load_spec

torch.set_num_threads(1)  # small models: one thread is fastest and steadiest
folder = Path("my-experiment")
folder.mkdir(exist_ok=True)

# %% [markdown]
# ## 1. The data: one `.npz` file per split
#
# Three noisy concentric rings in 2-D, labelled by ring. Any array shapes work (images stay
# `(n, 1, 28, 28)` if your network wants them so); `y` holds integer class labels from 0.


# %%
def rings(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = 1.0 + y + rng.normal(0, 0.25, n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    return x.astype(np.float32), y.astype(np.int64)


for split, n, seed in [("train", 1500, 0), ("val", 300, 1), ("test", 600, 2)]:
    x, y = rings(n, seed)
    np.savez(folder / f"{split}.npz", x=x, y=y)

# %% [markdown]
# ## 2. The network: a factory in a module next to the spec
#
# `build()` takes no arguments and returns the module. A `mynet.py` next to the spec file is found
# (the spec's folder is searched); an installed package works too (`"mypackage.models:build"`).
# The names of the submodules (`stem`, `middle`, `top`, `head`) are what the spec's span refers to.

# %%
(folder / "mynet.py").write_text(
    textwrap.dedent(
        """
        from torch import nn


        def build() -> nn.Module:
            net = nn.Sequential()
            net.add_module("stem", nn.Sequential(nn.Linear(2, 32), nn.Tanh()))
            net.add_module("middle", nn.Sequential(nn.Linear(32, 32), nn.Tanh()))
            net.add_module("top", nn.Sequential(nn.Linear(32, 16), nn.Tanh()))
            net.add_module("head", nn.Linear(16, 3))
            return net
        """
    )
)

# %% [markdown]
# Train it (here: a few hundred full-batch Adam steps) and save the state dict with safetensors.
# koopmanlens loads it strictly into a fresh `build()`: the keys and shapes must match.

# %%
build = runpy.run_path(str(folder / "mynet.py"))["build"]  # the factory, as your training code has it

torch.manual_seed(0)
net = build()
data = np.load(folder / "train.npz")
x_train, y_train = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
opt = torch.optim.Adam(net.parameters(), lr=1e-2)
for _ in range(300):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(x_train), y_train)
    loss.backward()
    opt.step()
print(f"training loss {loss.item():.3f}")
save_file(net.state_dict(), folder / "mynet.safetensors")

# %% [markdown]
# ## 3. The spec file
#
# Start one from a built-in (`koopmanlens spec mnist-fast > spec.toml`) or write it. Paths are
# relative to the spec file. The KAE uses the `yinyang` preset (sized for small layers) with fewer
# epochs; `[editing]` asks for class 0 to be unlearned. Every field, its type, default and allowed
# values: [Spec-file reference](../reference/spec-fields.md).

# %%
spec_file = folder / "spec.toml"
spec_file.write_text(
    textwrap.dedent(
        """
        name = "rings"
        description = "A 2-32-32-16-3 MLP on three rings: KAE from stem to top"
        seeds = 1

        [data]
        source = "files"
        train = "train.npz"
        val = "val.npz"
        test = "test.npz"
        class_names = ["inner", "middle", "outer"]

        [network]
        kind = "factory"
        factory = "mynet:build"
        weights = "mynet.safetensors"

        [span]
        layer_i = "stem"
        layer_j = "top"

        [kae]
        preset = "yinyang"
        overrides = { epochs = 40, batch_size = 256, k = 20 }

        [editing]
        classes = [0]
        """
    )
)
spec, base = load_spec(spec_file)  # checked: a wrong field or value is one clear error
print(spec.name, spec.span, spec.kae)

# %% [markdown]
# ## 4. Choose the layers
#
# `koopmanlens layers my-experiment/spec.toml` lists every named module with the shape of its
# output, to pick `span.layer_i` and `span.layer_j`. The same from Python:

# %%
network = build_factory_network(spec, base)
splits = build_data(spec, base)
for name, shape in list_layers(network, splits["train"].x[:8]):
    print(f"{name:<10} {shape}")

# %% [markdown]
# Layers of different widths (here 32 and 16) are fine: both are projected and padded to one
# width before the KAE.
#
# ## 5. Run it
#
# `run_experiment` is what `koopmanlens run my-experiment/spec.toml --out runs/rings` calls.

# %%
metrics = run_experiment(
    spec, RunOptions(out="runs/rings", progress=False, report=False, overwrite=True), base
)
kae = metrics["kae"]
print(f"network:   top-1 {metrics['subject']['test_top1']:.2%}")
print(f"surrogate: top-1 {kae['test_top1']['mean']:.2%}, agreement {kae['agreement']['mean']:.2%}")
row = metrics["editing"]["per_class"][0]
print(f"forget {row['forget']} (into {row['into']}): {row['target_before']:.1%} -> {row['target_after']:.1%}")

# %% [markdown]
# The run folder stores the spec (in `run.json`), so the other commands rebuild your data and
# network from it: `koopmanlens show`, `edit`, `topology`, `spectrum` and `report` work on it as on
# a built-in run. The command line is a thin shell over the same functions; called from Python:

# %%
app(["show", "runs/rings"], standalone_mode=False)
