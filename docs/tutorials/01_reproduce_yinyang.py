"""Tutorial 1: reproduce the paper on Yin-Yang and read the report's numbers."""

# %% [markdown]
# # Tutorial 1: reproduce the paper on Yin-Yang
#
# The paper's first experiment: a residual MLP classifies the Yin-Yang data set (3 classes of
# points in the unit square); a Koopman autoencoder (KAE) replaces its layers from `input` (after
# the first Linear + BN + ReLU) to `blocks.4` (the last residual block); the linear operator is then
# edited to unlearn each class, and the topology of the layers and the KAE's steps is measured.
#
# `koopmanlens reproduce yinyang` does all of it at the paper's sizes (about 2 minutes on a laptop
# CPU). Here we run the built-in spec `yinyang-quick`, the same pipeline on 1,000 / 200 / 1,000
# points with few epochs, from Python, and read every number it reports. The command line does the
# same with
#
# ```bash
# koopmanlens reproduce yinyang --quick --seeds 1 --out runs/yinyang-quick
# ```

# %%
import json
from pathlib import Path

import torch

import koopmanlens as kl
from koopmanlens.experiment import RunOptions, run_experiment
from koopmanlens.spec import load_spec

# Small models run fastest, and steadily, on one thread: with torch's default of one thread per core,
# anything else running on the machine can slow them down tenfold.
torch.set_num_threads(1)

# %% [markdown]
# ## The experiment, as data
#
# A spec says *what* is computed: the data and its split sizes, the network (a residual MLP
# trained from a preset), the span `layer_i -> layer_j`, the KAE preset, the edits. `load_spec`
# takes a built-in name or a `.toml` file; `koopmanlens spec yinyang-quick` prints the same TOML.

# %%
spec, base = load_spec("yinyang-quick")
print(spec.to_toml())

# %% [markdown]
# The paper fits 5 KAEs (seeds 0..4) and reports their mean and standard deviation (`--seeds 5`).
# One keeps this tutorial short; `replace` returns a checked copy of the spec.

# %%
spec = spec.replace(seeds=1)
options = RunOptions(out="runs/yinyang-quick", progress=False, report=True, overwrite=True)
metrics = run_experiment(spec, options, base)

# %% [markdown]
# ## Table 1: the surrogate
#
# Every accuracy is measured on the held-out **test** split (the authors' code evaluated on its
# training set). `top1` is the plain (micro) accuracy, `macro` the mean of the per-class
# accuracies (what the paper calls "Top-1"), `agreement` the fraction of test points on which the
# spliced network predicts what the original network predicts.

# %%
subject, kae = metrics["subject"], metrics["kae"]
print(f"subject network    top-1 {subject['test_top1']:.2%}  macro {subject['test_macro']:.2%}")
for key in ("test_top1", "test_macro", "agreement"):
    spread = f" (sd {kae[key]['sd']:.2%})" if len(kae["seeds"]) > 1 else ""  # sd needs 2 seeds or more
    print(f"KAE surrogate {key:<10} {kae[key]['mean']:.2%}{spread} over seeds {kae['seeds']}")
for row in kae["per_seed"]:
    print(f"  seed {row['seed']}: top-1 {row['test_top1']:.2%}, best epoch {row['best_epoch']}")

# %% [markdown]
# With the paper's sizes (`koopmanlens reproduce yinyang`) the surrogate matches the network it
# replaces: 98.47% top-1 against the network's 98.48% ([Results](../results.md)). The quick
# setting trains for a fraction of the epochs, so expect a few points less.
#
# ## Table 1: unlearning
#
# For each class `forget`, the operator exp(G) is edited in closed form so that the class's
# observables are sent to the nearest other class (`into`). `target_*` is the accuracy on the
# forgotten class before and after the edit, `others_*` the macro accuracy on the other classes,
# which should stay where it was. Means over the KAE seeds; `seconds` includes choosing the edit's
# regularisation `lam` on training data.

# %%
editing = metrics["editing"]
print(f"method {editing['method']}, evaluated on the {editing['split']} split")
for row in editing["per_class"]:
    print(
        f"forget {row['forget']} (into {row['into']}): target {row['target_before']:.1%} -> "
        f"{row['target_after']:.1%}, others {row['others_before']:.1%} -> {row['others_after']:.1%}, "
        f"{row['seconds'] * 1000:.0f} ms"
    )

# %% [markdown]
# ## Topology
#
# beta_0 (the number of connected components at one scale eps) of the test points, layer by layer
# in the network, and step by step along one KAE's `k` steps exp(sG/k) (decoded). In the paper's
# Fig. 3 (MNIST) both fall as the classes separate; what matters here is how closely the KAE's path
# tracks the network's layers. [Topology](../topology.md) explains the Betti curves over a grid of
# eps stored beside these numbers, which summarise this better than one eps.

# %%
topo = metrics["topology"]
print(f"eps = {topo['eps']:.3g} ({topo['eps_rule']}), {topo['n_points']} points")
print("layers   ", dict(zip(topo["layers"], topo["layer_beta0"], strict=True)))
steps = topo["kae_steps"]
print("KAE steps", {s: b for s, b in zip(steps, topo["kae_beta0"], strict=True) if s % 20 == 0})
print("seconds per stage:", {k: round(v, 1) for k, v in metrics["timing_s"].items() if k != "kae_per_seed"})

# %% [markdown]
# ## The run folder
#
# Everything above was also written to `runs/yinyang-quick/`: `metrics.json` (the same
# dictionary; [its keys](../metrics-json.md)), the weights as safetensors, `report.html` (a
# self-contained page with the tables and figures) and the figures as PNG. `kl.load_run` rebuilds
# every object from it; `koopmanlens show runs/yinyang-quick` prints the tables again.

# %%
out = Path("runs/yinyang-quick")
print(sorted(p.name for p in out.iterdir()))
saved = json.loads((out / "metrics.json").read_text())
assert saved["kae"]["test_top1"] == metrics["kae"]["test_top1"]

run = kl.load_run(out)
print("seeds in the folder:", run.seeds)
sur = run.surrogate(seed=0)  # the network with seed 0's KAE spliced in
print(f"{sur.layer_i} -> {sur.layer_j}, operator {tuple(sur.kae.generator.shape)}, k = {sur.kae.k}")
