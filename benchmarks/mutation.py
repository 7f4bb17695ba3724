"""Mutation testing of the modules that hold the science (issue 13 item 5), with mutmut 3.

For each module: copy ``src/``, ``tests/`` and ``pyproject.toml`` into a scratch folder, give mutmut a
config that mutates only that module and selects only the test files that cover it, run
``mutmut run --max-children N`` there (one module at a time: mutation testing is CPU heavy), read
mutmut's per-file results and write ``benchmarks/results/mutation.json``:

    {module: {total, killed, survived, timeout, no_tests, equivalent, score, survivors, equivalents}}

score = (killed + timeout) / (total - equivalent). A mutant the selected tests never reach ("no
tests") counts as surviving. Equivalent mutants (no test can tell them from the original: same
behaviour on every input) are listed with a one-line reason in ``benchmarks/mutation_equivalent.json``
(mutant id -> reason); the script reads that file, so the list is reviewable. An id listed there that
mutmut reports killed is an error in the list and is reported.

For ``pipeline.py`` only the evaluation stage is mutated (``fit_surrogates`` and its helpers
``_kae_pairs``, ``_seed_row``, ``_kae_block``; ``editing_block`` moved to ``edit_stage.py``, ``mean_sd``
to ``metrics.py``): the rest is I/O and orchestration, tested elsewhere.

Usage::

    python benchmarks/mutation.py                      # every module
    python benchmarks/mutation.py metrics.py kae/losses.py --max-children 1
    python benchmarks/mutation.py --workdir /tmp/kl-mut --keep   # keep the scratch folders

Needs ``pip install -e .[mutation]`` (mutmut >= 3). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.json"

#: module (under src/koopmanlens/) -> (test files that cover it, mutant-name prefixes to run or None).
MODULES: dict[str, tuple[list[str], list[str] | None]] = {
    "kae/losses.py": (["tests/test_kae.py"], None),
    "metrics.py": (["tests/test_metrics.py"], None),
    # the training tests cover the operator too but take seconds each: the model's math is pinned
    # by the operator, exponential and trajectory tests
    "kae/model.py": (
        ["tests/test_kae.py", "-k", "not train and not bf16 and not divergence and not lr"],
        None,
    ),
    "preprocessing.py": (["tests/test_preprocessing.py"], None),
    "topology.py": (["tests/test_topology.py", "tests/test_topology_exact.py"], None),
    "surrogate.py": (
        [
            "tests/test_capture_surrogate.py",
            "tests/test_surrogate_exact.py",
            "tests/test_surrogate_wiring.py",
            "tests/test_all_layers.py",
        ],
        None,
    ),
    "operators.py": (
        ["tests/test_operators.py", "tests/test_surrogate_exact.py", "tests/test_editing.py"],
        None,
    ),
    "edit_solvers.py": (
        ["tests/test_edit_solvers_exact.py", "tests/test_editing.py", "tests/test_alphaedit.py"],
        None,
    ),
    "editing.py": (["tests/test_editing_exact.py", "tests/test_editing.py", "tests/test_alphaedit.py"], None),
    "edit_record.py": (["tests/test_editing_exact.py", "tests/test_editing.py"], None),
    "pipeline.py": (
        ["tests/test_evaluation.py"],
        [
            "x_fit_surrogates__mutmut_",
            "x__kae_pairs__mutmut_",
            "x__seed_row__mutmut_",
            "x__kae_block__mutmut_",
        ],
    ),
    # the unlearning tests less the one that makes a whole quick run (the CLI's tables, not the math)
    # the editing block (Table 1's edit columns); the unlearning baselines' functions beside it are not
    # mutated yet: their tests train a small network per mutant
    "edit_stage.py": (["tests/test_evaluation.py"], ["x_editing_block__mutmut_", "x__edit_row__mutmut_"]),
    "unlearning.py": (["tests/test_unlearning.py", "-k", "not shows"], None),
}

#: The one-line mutations that survived the whole suite in the review of issue 13 (mutmut does not
#: generate them: they swap names). name -> (module, original line, mutated line, tests that must fail).
NAMED: dict[str, tuple[str, str, str, list[str]]] = {
    "surrogate evaluated on the training split": (
        "pipeline.py",
        "ev = Surrogate(network, layer_i, layer_j, pre, model).evaluate(test)",
        "ev = Surrogate(network, layer_i, layer_j, pre, model).evaluate(train)",
        ["tests/test_evaluation.py"],
    ),
    "every KAE step uses the whole map exp(G)": (
        "kae/model.py",
        "return operator_power(self.generator, self.k if s is None else s, self.k, self.expm_method)",
        "return operator_power(self.generator, self.k, self.k, self.expm_method)",
        ["tests/test_kae.py"],
    ),
    "edited operator's steps use the whole edited map": (
        "operators.py",
        "return fractional_operator_power(self.tensor, s, self._k())",
        "return self.tensor",
        ["tests/test_surrogate_exact.py"],
    ),
    "no Procrustes rotation in PairPreprocessor.fit": (
        "preprocessing.py",
        "self.rotation_ = procrustes_rotation(za, zb)",
        "self.rotation_ = torch.eye(self.dim_, dtype=torch.float64)",
        ["tests/test_preprocessing.py"],
    ),
    "macro accuracy computed as top-1": (
        "metrics.py",
        '"macro": float(per_class[present].mean()),',
        '"macro": float(correct.mean()),',
        ["tests/test_metrics.py"],
    ),
    "linear loss compares phi(x_i) with itself (eq. 4 typo)": (
        "kae/losses.py",
        "return _msq(z_j - z_i @ operator.T, reduction)",
        "return _msq(z_i - z_i @ operator.T, reduction)",
        ["tests/test_kae.py"],
    ),
}

#: The ``[tool.mutmut]`` table of a pyproject.toml: its header and every line up to the next table.
MUTMUT_SECTION = re.compile(r"\n\[tool\.mutmut\]\n(?:(?!\[)[^\n]*\n?)*")

#: mutmut exit codes (mutmut.stats.status_by_exit_code) grouped for the score.
KILLED = {1, 3, -11, -9}  # a failing test, a pytest internal error, a crash
TIMEOUT = {36, 24, -24, 152, 255}
NO_TESTS = {5, 33}
SURVIVED = {0}


def _mutmut_config(module: str, tests: list[str]) -> str:
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f'only_mutate = ["src/koopmanlens/{module}"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        "use_git_change_detection = false\n"
        # torch is not fork-safe once its thread pool is up: a worker forked from mutmut hangs
        'process_isolation = "forkserver"\n'
    )


def _prepare(work: Path, module: str, tests: list[str]) -> list[str]:
    """Scratch copy for one module; returns the selected test files that exist."""
    tests = [t for t in tests if not t.startswith("tests/") or (ROOT / t).exists()]
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    text = (ROOT / "pyproject.toml").read_text()
    text = re.sub(MUTMUT_SECTION, "\n", text)  # ours replaces any project section
    (work / "pyproject.toml").write_text(text + _mutmut_config(module, tests))
    return tests


def _run_mutmut(
    work: Path, prefixes: list[str] | None, module: str, max_children: int, names: list[str] | None = None
) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut puts mutants/src first
    env["PYTHONHASHSEED"] = "0"
    env.setdefault("OMP_NUM_THREADS", "1")  # one core per mutant worker
    beside = Path(sys.executable).with_name("mutmut")  # the venv's, when its bin is not on PATH
    mutmut = str(beside) if beside.exists() else shutil.which("mutmut") or "mutmut"
    names = list(names or [])
    if prefixes and not names:
        dotted = "koopmanlens." + module.removesuffix(".py").replace("/", ".")
        names = [f"{dotted}.{p}*" for p in prefixes]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [mutmut, "run", "--max-children", str(max_children), *names],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"mutmut failed on {module} (exit {proc.returncode}); scratch folder {work}")
    return wall


def _rerun_survivors(work: Path, module: str, prefixes: list[str] | None, max_children: int) -> float:
    """Refresh the tests of a kept scratch folder and run mutmut again on its survivors only."""
    if not (work / "mutants").is_dir():
        raise SystemExit(f"--rerun-survivors needs the kept scratch folder {work} (run with --keep first)")
    shutil.rmtree(work / "tests")
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    tests = [t for t in MODULES[module][0] if not t.startswith("tests/") or (ROOT / t).exists()]
    text = re.sub(MUTMUT_SECTION, "\n", (ROOT / "pyproject.toml").read_text())
    (work / "pyproject.toml").write_text(text + _mutmut_config(module, tests))  # today's test files
    # mutmut maps each mutant to the tests that reach it once ("stats"); with new test files that map
    # is stale and the new tests would never run, so it is collected again
    (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    codes = _read_results(work, module, prefixes)
    names = [k for k, c in codes.items() if c not in KILLED | TIMEOUT]
    print(f"rerunning {len(names)} surviving mutants of {module} ...", flush=True)
    if not names:
        return 0.0
    return _run_mutmut(work, None, module, max_children, names)


def _read_results(work: Path, module: str, prefixes: list[str] | None) -> dict[str, int | None]:
    meta = work / "mutants" / "src" / "koopmanlens" / (module + ".meta")
    data = json.loads(meta.read_text())
    codes: dict[str, int | None] = data["exit_code_by_key"]
    if prefixes:
        codes = {k: v for k, v in codes.items() if any(f".{p}" in k for p in prefixes)}
    return codes


def summarise(module: str, codes: dict[str, int | None], equivalent: dict[str, str]) -> dict:
    eq = {k: equivalent[k] for k in codes if k in equivalent}
    killed = sorted(k for k, c in codes.items() if c in KILLED)
    timeout = sorted(k for k, c in codes.items() if c in TIMEOUT)
    no_tests = sorted(k for k, c in codes.items() if c in NO_TESTS and k not in eq)
    survived = sorted(k for k, c in codes.items() if c in SURVIVED and k not in eq)
    other = sorted(
        k for k, c in codes.items() if c not in KILLED | TIMEOUT | NO_TESTS | SURVIVED and k not in eq
    )
    wrongly_equivalent = sorted(k for k in eq if codes[k] in KILLED | TIMEOUT)
    total = len(codes)
    denom = total - len(eq)
    score = (len(killed) + len(timeout) - len(wrongly_equivalent)) / denom if denom else 1.0
    return {
        "total": total,
        "killed": len(killed),
        "survived": len(survived) + len(no_tests) + len(other),
        "timeout": len(timeout),
        "no_tests": len(no_tests),
        "other": {k: codes[k] for k in other},
        "equivalent": len(eq),
        "score": round(score, 4),
        "survivors": survived + no_tests + other,
        "equivalents": eq,
        "listed_equivalent_but_killed": wrongly_equivalent,
    }


def run_named(base: Path) -> dict[str, dict]:
    """Apply each :data:`NAMED` mutation to a scratch copy and run its tests: each must fail."""
    out = {}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("OMP_NUM_THREADS", "1")
    for name, (module, old, new, tests) in NAMED.items():
        work = base / "named"
        if not _prepare(work, module, tests):
            out[name] = {"module": module, "mutated": new, "killed": False, "by": [], "note": "no tests"}
            continue
        path = work / "src" / "koopmanlens" / module
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"named mutation {name!r}: the original line is not once in {module}")
        path.write_text(text.replace(old, new))
        env["PYTHONPATH"] = str(work / "src")
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        failed = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("FAILED ")]
        out[name] = {"module": module, "mutated": new, "killed": proc.returncode == 1, "by": failed}
        print(f"  {'killed  ' if proc.returncode == 1 else 'SURVIVED'} {name} ({', '.join(failed)})")
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help=f"modules to run (default all: {', '.join(MODULES)})")
    ap.add_argument("--max-children", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folders")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--named-only", action="store_true", help="only check the review's named mutations")
    ap.add_argument(
        "--rerun-survivors",
        action="store_true",
        help="with --workdir of a kept run: refresh the tests and rerun only that run's survivors",
    )
    args = ap.parse_args(argv)
    modules = [] if args.named_only else (args.modules or list(MODULES))
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown modules {unknown}; choose from {list(MODULES)}")
    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    equivalent = {k: v for k, v in equivalent.items() if not k.startswith("_")}
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = previous.get("modules", {})
    base = args.workdir or Path(tempfile.mkdtemp(prefix="koopmanlens-mutation-"))
    named = previous.get("named", {})
    if args.named_only or (not args.modules and not args.rerun_survivors):
        print("the review's named mutations:", flush=True)
        named = run_named(base)
    for module in modules:
        tests, prefixes = MODULES[module]
        work = base / module.replace("/", "_").removesuffix(".py")
        if args.rerun_survivors:
            wall = _rerun_survivors(work, module, prefixes, args.max_children)
            res = summarise(module, _read_results(work, module, prefixes), equivalent)
            res["tests"], res["wall_s"] = tests, round(results.get(module, {}).get("wall_s", 0) + wall, 1)
            results[module] = res
            print(f"  {module}: {res['killed']} killed, {res['survived']} survived, score {res['score']:.1%}")
            continue
        tests = _prepare(work, module, tests)
        if not any(t.startswith("tests/") for t in tests):
            print(f"no test file for {module}: skipped (mutmut would run the whole suite)")
            continue
        print(f"mutmut on {module} with {' '.join(tests)} ...", flush=True)
        wall = _run_mutmut(work, prefixes, module, args.max_children)
        res = summarise(module, _read_results(work, module, prefixes), equivalent)
        res["tests"] = tests
        res["wall_s"] = round(wall, 1)
        results[module] = res
        print(
            f"  {res['killed']} killed, {res['survived']} survived, score {res['score']:.1%} ({wall:.0f} s)"
        )
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not args.keep and args.workdir is None:
        shutil.rmtree(base, ignore_errors=True)
    tot = {k: sum(r[k] for r in results.values()) for k in ("total", "killed", "timeout", "equivalent")}
    overall = (tot["killed"] + tot["timeout"]) / max(1, tot["total"] - tot["equivalent"])
    out = {
        "tool": f"mutmut {_mutmut_version()}",
        "score": "(killed + timeout) / (total - equivalent); 'no tests' counts as surviving",
        "overall": {**tot, "score": round(overall, 4)},
        "named": named,
        "modules": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'module':<20}{'total':>7}{'killed':>8}{'surv':>6}{'t/o':>5}{'equiv':>7}{'score':>8}")
    for module, r in results.items():
        print(
            f"{module:<20}{r['total']:>7}{r['killed']:>8}{r['survived']:>6}{r['timeout']:>5}"
            f"{r['equivalent']:>7}{r['score']:>8.1%}"
        )
    print(f"{'overall':<20}{tot['total']:>7}{tot['killed']:>8}{'':>6}{tot['timeout']:>5}", end="")
    print(f"{tot['equivalent']:>7}{overall:>8.1%}\nwritten {args.out}")
    return 0


def _mutmut_version() -> str:
    try:
        from importlib.metadata import version

        return version("mutmut")
    except Exception:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
