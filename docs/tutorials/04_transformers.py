"""Tutorial 4: a per-token Koopman lens on a transformer (modular addition)."""

# %% [markdown]
# # Tutorial 4: a per-token Koopman lens on a transformer
#
# A transformer's layer output has shape (batch, sequence, d). koopmanlens's per-token mode takes
# **positions** as rows: the KAE is fitted on x_i -> x_j of single positions and spliced back at
# those positions, through forward hooks on any `nn.Module` (a Hugging Face model too; tuple outputs
# are handled). The spliced network is then scored as language-model tooling scores a replacement:
# the **CE loss score** (CE_ablated - CE_spliced) / (CE_ablated - CE_clean), 1 = as the network,
# 0 = as the ablated span, beside what the identity (skip the span) and a least-squares linear map
# get on the same positions.
#
# The testbed is the modular-addition transformer of Nanda et al. 2023 (tokens `a b =`, answer
# `a + b mod p`). The built-in spec `modadd` runs it at p = 113 (`koopmanlens run modadd`, a few
# minutes); here a smaller p keeps the tutorial under two minutes.

# %%
import torch
from rich.console import Console

from koopmanlens.experiment import RunOptions, run_experiment
from koopmanlens.lm_artifacts import load_lm_run
from koopmanlens.lm_metrics import evaluate_splice
from koopmanlens.lm_testbeds import token_data
from koopmanlens.report.lm import lm_tables
from koopmanlens.spec import load_spec
from koopmanlens.tokens import TokenSurrogate

torch.set_num_threads(1)  # small models: one thread is fastest and steadiest

network = {"d_model": 64, "n_heads": 2, "d_mlp": 256, "target_val": 0.95, "check_every": 100}
kae = {"hidden": 128, "observables": 64, "k": 10, "epochs": 60, "batch_size": 64, "lr": 3e-3}
changes = {"data.p": 23, "data.train_frac": 0.8, "network.overrides": network, "kae.overrides": kae}
spec = load_spec("modadd")[0].replace(seeds=1, **changes)
print(spec.to_toml())

# %% [markdown]
# `run_experiment` trains the network from its seed (full-batch AdamW until 95% validation
# accuracy here), captures the residual stream before and after the MLP at the `=` position
# (`span.positions = [2]`), fits the KAE, and scores everything on the **test** pairs, which no
# choice looked at. `koopmanlens run spec.toml` does the same from the command line.

# %%
metrics = run_experiment(spec, RunOptions("runs/modadd-small", progress=False))
console = Console(width=110)
for table in lm_tables(metrics):
    console.print(table)

# %% [markdown]
# Read the LM table from the top: the clean network, the KAE spliced across the MLP, then the
# identity (the MLP skipped) and the least-squares linear map, then the two ablations that define
# the scores. The MLP turns cos/sin of single tokens into cos/sin of w(a + b); a linear map cannot,
# which is why this span is a hard test for a surrogate. A CE score slightly above 1 means the
# spliced network's CE on these few test pairs came out below the network's own; at p = 23 the test
# split has about a hundred pairs, so read the scores to two decimals (the p = 113 run in
# docs/transformers.md scores on 6,385).
#
# ## Reopen the run and splice by hand
#
# The run folder holds the network, the preprocessing and the KAE as safetensors + JSON.
# `load_lm_run` rebuilds the network from the spec in `run.json` and gives a `TokenSurrogate`.

# %%
run = load_lm_run("runs/modadd-small")
sur = run.surrogate(0)
test = token_data(run.spec)["test"]
spliced = sur.token_logits(test.inputs)[:, 2].argmax(-1)
clean = run.network(test.inputs)[:, 2].argmax(-1)
print(f"test accuracy: network {(clean == test.labels).double().mean():.2%}, "
      f"KAE spliced {(spliced == test.labels).double().mean():.2%}, "
      f"agreement {(spliced == clean).double().mean():.2%}")  # fmt: skip

# %% [markdown]
# ## The same on your own transformer
#
# Nothing above is specific to the testbed: `TokenSurrogate.fit` takes any module, its token ids,
# the two layer names, a padding mask (optional) and the positions; `evaluate_splice` scores it on
# held-out ids. Here it is refitted on the same network with another seed, on the last position.

# %%
data = token_data(run.spec)
mine = TokenSurrogate.fit(
    run.network,
    data["train"].inputs,
    "blocks.0.resid_mid",
    "blocks.0.resid_post",
    positions="last",
    seed=1,
    val=(data["val"].inputs, None),
    hidden=128,
    observables=64,
    k=10,
    epochs=60,
    batch_size=64,
    lr=3e-3,
)
report = evaluate_splice(mine, test.inputs, targets=test.targets)
print({name: round(value, 4) for name, value in report["scores"].items()})

# %% [markdown]
# ## What the lifted state holds
#
# Modular addition is computed with a few key frequencies w_k = 2 pi k / p (Nanda et al.). The run's
# Fourier block measures how much of the variance of the KAE's observables phi(x_i), over all p^2
# pairs, lies on cos/sin of w_k a, w_k b and w_k (a + b) for the network's key frequencies, and
# whether the operator's dominant modes rotate at them. report.html plots the share per frequency.

# %%
f = metrics["fourier"]
print("key frequencies:", f["key_frequencies"])
print(f"variance of phi(x_i) on them: {f['variance_fraction_phi_x_i']:.1%} "
      f"(chance {f['variance_fraction_chance']:.1%})")  # fmt: skip
print("edit (forget answer 0):", {k: round(v, 4) for k, v in metrics["editing"]["per_seed"][0].items()
                                  if k.startswith(("target", "others"))})  # fmt: skip
