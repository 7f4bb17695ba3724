"""The generated reference of the documentation site (``docs/gen_reference.py``, run by mkdocs as a
hook) covers every public name, every CLI command and option and every spec field, and every
generated page is in the site's navigation. ``mkdocs build --strict`` (.ci/run) then checks that
every cross-reference resolves; these checks need only koopmanlens, not mkdocs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import koopmanlens as kl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pages(gen) -> dict[str, str]:
    return gen.generated_pages()


def test_generator_finds_nothing_missing(gen, pages):
    assert gen.missing_from_reference(pages) == []


def test_every_public_name_is_in_the_api_reference(pages):
    index = pages["reference/index.md"]
    api = "\n".join(text for key, text in pages.items() if key.startswith("reference/api/"))
    rendered = set(re.findall(r"^::: (\S+)$", api, flags=re.M))
    for name in kl.__all__:
        obj = getattr(kl, name)
        target = obj.__name__ if isinstance(obj, type(kl)) else f"{obj.__module__}.{obj.__name__}"
        assert f"[`{name}`][{target}]" in index, name
        module = target if isinstance(obj, type(kl)) else obj.__module__
        assert module in rendered, f"{name}: module {module} is on no API page"


def test_every_cli_command_and_option_is_in_the_cli_reference(gen, pages):
    from typer.main import get_command

    from koopmanlens.cli import app

    cli = pages["reference/cli.md"]
    commands = get_command(app).commands
    assert {
        "reproduce",
        "run",
        "edit",
        "topology",
        "spectrum",
        "report",
        "show",
        "specs",
        "spec",
        "layers",
    } <= set(commands)
    for name, command in commands.items():
        section = cli.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("-"):
                    assert f"`{opt}`" in section, f"{name} {opt}"


def test_every_spec_field_is_in_the_spec_reference(pages):
    from koopmanlens import spec as s

    text = pages["reference/spec-fields.md"]
    for cls in (s.ExperimentSpec, s.DataSpec, s.NetworkSpec, s.SpanSpec, s.PreprocessingSpec, s.KAESpec):
        for field in cls.model_fields:
            assert f"| `{field}` |" in text, f"{cls.__name__}.{field}"
    for value in ("yinyang", "mnist", "idx", "files", "memit", "emmet-kmeans", "emmet", "resmlp", "factory"):
        assert f"`{value}`" in text
    for name in s.builtin_specs():
        assert f"| `{name}` |" in text


def test_every_page_is_in_the_nav(pages):
    nav = (ROOT / "mkdocs.yml").read_text()
    hand_written = [p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")]
    for page in [*pages, *hand_written]:
        assert f": {page}\n" in nav, f"{page} is not in mkdocs.yml's nav"


def test_tutorial_pages_keep_every_cell(gen):
    for script in gen.tutorials():
        cells = gen.tutorial_cells(script.read_text())
        page = gen.tutorial_md(script)
        assert [k for k, _ in cells].count("code") >= 3
        for kind, source in cells[1:]:
            assert source in page, (script.name, kind, source[:80])


def test_the_check_notices_what_is_missing(gen, pages):
    broken = dict(pages)
    broken["reference/index.md"] = pages["reference/index.md"].replace("[`Surrogate`]", "[`Sur`]")
    broken["reference/cli.md"] = pages["reference/cli.md"].replace("`--forget`", "`--f`")
    broken["reference/spec-fields.md"] = pages["reference/spec-fields.md"].replace("| `layer_j` |", "|")
    missing = " ".join(gen.missing_from_reference(broken))
    assert "koopmanlens.Surrogate" in missing and "--forget" in missing and "layer_j" in missing
