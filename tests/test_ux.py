"""The command line as a user meets it: rich markup from files and from the user is printed literally,
every command's --help shows an example, enumerated options are checked by the parser, `show` prints
the run's spec, and progress is shown for every long stage (and never under --no-progress)."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import quick_yinyang
from rich.console import Console
from typer.testing import CliRunner

from koopmanlens import cli
from koopmanlens.cli import app

runner = CliRunner()
COMMANDS = ["reproduce", "show", "edit", "topology", "report", "ablate-isometry", "spectrum"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ux") / "run"
    res = quick_yinyang(out, 1)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def wide(monkeypatch):
    """Consoles wide enough that no table cell wraps, so strings can be found whole in the output."""
    monkeypatch.setattr(cli, "console", Console(width=300))
    monkeypatch.setattr(cli, "err_console", Console(width=300, stderr=True, soft_wrap=True))


def _planted(quick_run, tmp_path, text: str):
    """A copy of the quick run whose dataset, layer and preset strings are ``text``."""
    run = tmp_path / "planted"
    shutil.copytree(quick_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["dataset"] = text
    metrics["split"] = text
    metrics["editing"]["method"] = text
    metrics["topology"]["layers"][1] = text
    (run / "metrics.json").write_text(json.dumps(metrics))
    info = json.loads((run / "run.json").read_text())
    info["preset"] = text
    info["layer_j"] = text
    (run / "run.json").write_text(json.dumps(info))
    return run


@pytest.mark.parametrize("text", ["[/x]", "[link=https://evil.example]x[/link]", "[bold]b[/bold] [nan]"])
def test_show_prints_markup_from_files_literally(quick_run, tmp_path, wide, text):
    res = runner.invoke(app, ["show", str(_planted(quick_run, tmp_path, text))])
    assert res.exit_code == 0, res.output
    assert res.output.count(text) >= 4  # title, dataset cell, editing title, spec lines


def test_error_message_keeps_brackets(tmp_path, wide):
    res = runner.invoke(app, ["show", str(tmp_path / "run[nan]")])
    assert res.exit_code == 2
    assert "run[nan]" in res.output


def test_show_prints_the_run_spec(quick_run, wide):
    res = runner.invoke(app, ["show", str(quick_run)])
    assert res.exit_code == 0, res.output
    head = res.output.split("┏")[0]  # the spec comes before the first table
    for word in ("dataset: yinyang", "preset: default", "quick: yes", "seeds: 0", "input -> blocks.4"):
        assert word in head, head


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples(command):
    res = runner.invoke(app, [command, "--help"])
    assert res.exit_code == 0, res.output
    assert "Examples" in res.output
    assert f"koopmanlens {command} " in res.output


def test_preset_and_method_are_choices(tmp_path):
    res = runner.invoke(app, ["reproduce", "yinyang", "--preset", "bogus", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "Invalid value for '--preset'" in res.output
    res = runner.invoke(app, ["edit", str(tmp_path / "none"), "--forget", "0", "--method", "bogus"])
    assert res.exit_code == 2
    assert "Invalid value for '--method'" in res.output
    assert "emmet-kmeans" in runner.invoke(app, ["edit", "--help"]).output


@pytest.mark.parametrize(("dataset", "preset"), [("yinyang", "fast"), ("mnist", "default")])
def test_preset_of_another_dataset_is_one_clear_error(tmp_path, wide, dataset, preset):
    out = tmp_path / "r"
    res = runner.invoke(app, ["reproduce", dataset, "--preset", preset, "--out", str(out)])
    assert res.exit_code == 2
    assert f"preset {preset!r} is not a {dataset} preset" in res.output
    assert not out.exists()


def test_progress_for_every_stage(tmp_path):
    res = quick_yinyang(tmp_path / "run", 2, "--progress", report=True)
    assert res.exit_code == 0, res.output
    for line in ("KAE seeds", "2/2", "edit class/seed", "6/6", "topology layers+steps", "writing report"):
        assert line in res.output, line
    quiet = quick_yinyang(tmp_path / "quiet", 2, report=True)
    assert quiet.exit_code == 0, quiet.output
    for line in ("KAE seeds", "edit class/seed", "topology layers+steps", "writing report"):
        assert line not in quiet.output, line


def test_progress_of_post_processing_commands(quick_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    for args, line in (
        (["edit", str(run), "--forget", "1"], "edit seeds"),
        (["topology", str(run)], "topology layers+steps"),
        (["report", str(run)], "writing report"),
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert line in res.output, (args, res.output)
        quiet = runner.invoke(app, [*args, "--no-progress"])
        assert quiet.exit_code == 0, quiet.output
        assert line not in quiet.output, (args, quiet.output)
