"""Tutorial 3: unlearn a class with an operator edit, inspect it, revert it."""

# %% [markdown]
# # Tutorial 3: unlearn a class, inspect the edit, revert it
#
# Between the two layers, the KAE's middle is one linear map, the operator K = exp(G) acting on
# observables phi(x_i). A linear map can be edited in closed form (paper Appendix D, Algorithm 1):
# change K so that the observables of one class land where another class's land, and the spliced
# network stops predicting that class, while the other classes keep their answers. The edit takes
# milliseconds, touches nothing but K, and is undone exactly.
#
# We fit a small surrogate on Yin-Yang first (the README's quick start, in seconds).

# %%
import torch

import koopmanlens as kl
from koopmanlens.editing import Edit, evaluate_edit

torch.set_num_threads(1)  # small models: one thread is fastest and steadiest

train, val, test = (
    kl.data.yinyang(split, n=n) for split, n in [("train", 1000), ("validation", 200), ("test", 1000)]
)
net = kl.subject.train_resmlp(train, preset="yinyang", seed=0, epochs=40, progress=False)
sur = kl.Surrogate.fit(
    net,
    train,
    layer_i="input",
    layer_j="blocks.4",
    preset="yinyang",
    seed=0,
    val=val,
    epochs=60,
    progress=False,
)
before = sur.evaluate(test)
print("classes:", train.class_names)
print("per-class accuracy of the spliced network:", [f"{a:.1%}" for a in before["per_class"]])

# %% [markdown]
# ## The edit
#
# `unlearn_class` builds Algorithm 1's problem from *training* data only: the keys are phi(x_i) of
# the training samples of class `forget`, the preserved keys those of every other training sample,
# and the new value for every key is the observable-space centroid of class `into` (by default the
# class whose centroid is nearest). The default solver is a least-squares edit with all keys
# (`method="memit"`); its regularisation `lam` is chosen automatically as the largest on a grid for
# which at most 1% of a training sample of the class keeps its label.

# %%
edit = kl.editing.unlearn_class(sur, train, forget=2)
names = train.class_names
print(f"forget {edit.forget} ({names[edit.forget]}) into {edit.into} ({names[edit.into]})")
print(f"method {edit.method}, lam {edit.params['lam']}, {edit.seconds * 1000:.0f} ms")

# %% [markdown]
# `apply` returns a **new** surrogate that shares the network, the preprocessing and the KAE with
# `sur` and uses the edited operator; `sur` itself is unchanged (a surrogate is immutable:
# `sur.with_operator(op)` is how any other operator is put in). A surrogate's operator, `sur.op`,
# is an object: the trained KAE's `GeneratorOperator` (step s is exp(sG/k)) or an edited
# `MatrixOperator` (step s is the fractional power K'^(s/k)).

# %%
forgot = edit.apply(sur)
after = forgot.evaluate(test)
for c, name in enumerate(train.class_names):
    print(f"class {c} ({name:>4}): {before['per_class'][c]:6.1%} -> {after['per_class'][c]:6.1%}")
assert sur.op.is_own(sur.kae)  # the original still uses the KAE's own exp(G)
print("operators:", sur.op, "->", forgot.op)

# %% [markdown]
# `evaluate_edit` gives the numbers Table 1 reports: the accuracy on the forgotten class before and
# after, and the macro accuracy on the other classes, which should stay where it was.

# %%
report = evaluate_edit(sur, edit, test)
print({k: round(v, 4) for k, v in report.items() if k.startswith(("target", "others"))})

# %% [markdown]
# ## Inspect it
#
# An `Edit` holds both operators (`edit.before`, `edit.after`; their whole maps as p x p float64
# matrices, column convention `z_next = K z`, are `edit.operator_before` and `edit.operator_after`),
# the parameters and the solver's diagnostics (residuals, condition numbers). How large is the
# change, and how much of the spectrum moved?

# %%
K0, K1 = edit.operator_before, edit.operator_after
print(f"relative change ||K' - K|| / ||K|| = {float(torch.linalg.norm(K1 - K0) / torch.linalg.norm(K0)):.3f}")
print(f"rank of the change: {int(torch.linalg.matrix_rank(K1 - K0))} of {K0.shape[0]}")
print(
    "spectral radius before / after:",
    [round(float(op.eigvals().abs().max()), 3) for op in (edit.before, edit.after)],
)
print("diagnostics:", sorted(edit.diagnostics))

# %% [markdown]
# Where do the forgotten class's test points go? Advanced by the original operator, each class's
# observables have a centroid; advanced by the edited one, the forgotten class's centroid lands next
# to class `into`'s:

# %%
z = sur.encode_i(sur.representations(test.x)[sur.layer_i]).double()  # phi(x_i) of the test points, rows
centroids = torch.stack([(z[test.y == c] @ K0.T).mean(0) for c in range(test.n_classes)])
moved = (z[test.y == 2] @ K1.T).mean(0, keepdim=True)
print("distance of class 2's edited centroid to each class's original one:", torch.cdist(moved, centroids))
print(
    "what the edited network predicts for class 2:",
    torch.bincount(forgot.predict(test.x[test.y == 2]), minlength=3),
)

# %% [markdown]
# The edited matrix is no longer the exponential of a generator, so the intermediate steps come
# from its fractional matrix power K'^(s/k) (`forgot.op.power(s)`), or a clear error when that
# power is not real:

# %%
try:
    states = forgot.trajectory(test.x[:200], steps=[0, forgot.kae.k // 2, forgot.kae.k])
    print("decoded states at steps 0, k/2, k:", tuple(states.shape))
except kl.InputError as exc:
    print("no intermediate steps after this edit:", exc)

# %% [markdown]
# ## Revert it, save it, load it
#
# `revert` gives a surrogate whose operator is exactly the one before the edit (here: the KAE's own
# generator, exp(G) again), so every prediction is the original's.

# %%
original = edit.revert(forgot)
assert original.op.is_own(original.kae)
assert torch.equal(original.current_operator(), sur.current_operator())
assert original.evaluate(test)["per_class"] == before["per_class"]
print("reverted: per-class accuracy", [f"{a:.1%}" for a in original.evaluate(test)["per_class"]])

# %% [markdown]
# An edit is two files: the operators as safetensors, the rest as JSON (never pickle).
# `koopmanlens edit RUN_DIR --forget 2` does the same for every KAE seed of a run folder and stores
# the edits in `RUN_DIR/edits/`.

# %%
edit.save("edits/forget-2")
loaded = Edit.load("edits/forget-2")
assert torch.equal(loaded.operator_after, edit.operator_after)
print(loaded.to_dict()["params"])

# %% [markdown]
# ## Other choices
#
# Send the class somewhere else (`into`), or solve with exact EMMET on k-means-reduced keys
# (`method="emmet-kmeans"`) or the authors' EMMET with every key and ridges (`method="emmet"`).
# [Validation](../validation.md) says why `memit` is the default: on Yin-Yang and MNIST it forgot
# the class while moving the other classes least.

# %%
for method, into in [("memit", 1), ("emmet-kmeans", None)]:
    other = kl.editing.unlearn_class(sur, train, forget=2, into=into, method=method)
    r = evaluate_edit(sur, other, test)
    print(f"{method:>12} into {other.into}: target {r['target_after']:.1%}, others {r['others_after']:.1%}")
