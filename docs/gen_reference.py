"""The generated pages of the documentation site, and the mkdocs hook that adds them.

Everything here is read off the code, so the site cannot drift from it:

- ``reference/spec-fields.md``: every field of the spec file (the pydantic classes of
  :mod:`koopmanlens.spec`: type, default, allowed values, the field's docstring), the built-in specs
  and the presets that ``network.preset`` / ``kae.preset`` and their ``overrides`` name;
- ``reference/cli.md``: every command of the typer app ``koopmanlens.cli.app``, its usage, arguments,
  options (type, default, help) and examples;
- ``reference/index.md`` and ``reference/api/*.md``: the public names of ``koopmanlens.__all__``, each
  linked to its mkdocstrings entry, and one mkdocstrings page per public module;
- ``tutorials/*.md``: the jupytext percent-format scripts of ``docs/tutorials/`` as pages (markdown
  cells as text, code cells as code), each with a link to download the script.

The functions that write markdown need only koopmanlens (``tests/test_docs_reference.py`` calls them
without mkdocs installed); ``on_files`` and ``on_page_content`` are the hook (``mkdocs.yml: hooks``).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import re
import types
import typing
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
TUTORIALS = DOCS / "tutorials"

#: One API page per entry: (page name, title, modules rendered on it by mkdocstrings).
API_PAGES: list[tuple[str, str, list[str]]] = [
    (
        "surrogate",
        "koopmanlens.surrogate",
        [
            "koopmanlens.surrogate",
            "koopmanlens.operators",
            "koopmanlens.states",
            "koopmanlens.trajectories",
        ],
    ),
    ("capture", "koopmanlens.capture", ["koopmanlens.capture"]),
    ("preprocessing", "koopmanlens.preprocessing", ["koopmanlens.preprocessing"]),
    (
        "kae",
        "koopmanlens.kae",
        [
            "koopmanlens.kae",
            "koopmanlens.kae.model",
            "koopmanlens.kae.losses",
            "koopmanlens.kae.trainer",
            "koopmanlens.fit_record",
            "koopmanlens.loop",
            "koopmanlens.callbacks",
        ],
    ),
    ("editing", "koopmanlens.editing", ["koopmanlens.editing"]),
    ("edit_solvers", "koopmanlens.edit_solvers", ["koopmanlens.edit_solvers"]),
    ("baselines", "koopmanlens.baselines", ["koopmanlens.baselines", "koopmanlens.unlearning"]),
    ("topology", "koopmanlens.topology", ["koopmanlens.topology"]),
    ("spectrum", "koopmanlens.spectrum", ["koopmanlens.spectrum"]),
    ("spec", "koopmanlens.spec", ["koopmanlens.spec"]),
    ("experiment", "koopmanlens.experiment", ["koopmanlens.experiment"]),
    ("runs", "koopmanlens.runs", ["koopmanlens.runs"]),
    (
        "tokens",
        "koopmanlens.tokens",
        [
            "koopmanlens.tokens",
            "koopmanlens.lm_metrics",
            "koopmanlens.lm_testbeds",
            "koopmanlens.lm_run",
            "koopmanlens.lm_artifacts",
            "koopmanlens.testbeds.modadd",
            "koopmanlens.testbeds.fourier",
        ],
    ),
    (
        "store",
        "koopmanlens.store",
        [
            "koopmanlens.store",
            "koopmanlens.moments",
            "koopmanlens.kae.stream",
            "koopmanlens.distributed",
            "koopmanlens.store_fit",
            "koopmanlens.store_stage",
        ],
    ),
    (
        "data",
        "koopmanlens.data",
        [
            "koopmanlens.data",
            "koopmanlens.data.base",
            "koopmanlens.data.synthetic",
            "koopmanlens.data.mnist_io",
            "koopmanlens.data.userdata",
            "koopmanlens.data.seal",
        ],
    ),
    ("subject", "koopmanlens.subject", ["koopmanlens.subject"]),
    ("metrics", "koopmanlens.metrics", ["koopmanlens.metrics"]),
    ("errors", "koopmanlens.errors", ["koopmanlens.errors", "koopmanlens.checks"]),
]


def _cell(text: object) -> str:
    """Text safe inside a markdown table cell (one line, no bare pipes)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: object) -> str:
    return f"`{text}`" if str(text) else "`''`"


def _rst_to_md(text: str) -> str:
    """A docstring's Sphinx roles (``:class:`~a.B```) and double backticks as markdown code."""
    text = re.sub(r":(?:class|func|mod|meth|attr|data|exc):`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


# ---------------------------------------------------------------------------------------------- spec


def _type_name(annotation: Any) -> str:
    """A readable type: ``int >= 1 or None``, ``list[str]``, ``"a" | "b"``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        base, *meta = args
        bounds = []
        for m in meta:
            for m2 in getattr(m, "metadata", [m]):
                for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    if getattr(m2, attr, None) is not None:
                        bounds.append(f"{sym} {getattr(m2, attr)}")
        return _type_name(base) + (" " + ", ".join(bounds) if bounds else "")
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        name = " or ".join(_type_name(a) for a in parts)
        return f"{name} or none" if len(parts) < len(args) else name
    if origin is dict and len(typing.get_args(args[1])) > 3:
        return "table of name = value"
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _allowed(annotation: Any) -> list[str]:
    """The Literal values anywhere in ``annotation``."""
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return [v for a in typing.get_args(annotation) for v in _allowed(a)]


def field_docstrings(cls: type) -> dict[str, str]:
    """The attribute docstrings (a string right under ``name: type = default``) of a class."""
    import ast

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    out: dict[str, str] = {}
    for prev, node in itertools.pairwise(body):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            out[prev.target.id] = inspect.cleandoc(node.value.value)
    return out


def spec_tables() -> list[tuple[str, type]]:
    """(TOML table, pydantic class) of every part of a spec file, top level first."""
    from koopmanlens import spec as s

    tables: list[tuple[str, type]] = [("top level", s.ExperimentSpec)]
    for name, field in s.ExperimentSpec.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, s.BaseModel):
            tables.append((f"[{name}]", ann))
    return tables


def _toml(value: Any) -> str:
    """A default as it would be written in TOML (``none``: leave the field out)."""
    import json

    if value is None:
        return "none"
    if isinstance(value, tuple | list | dict | bool | str):
        return _code(json.dumps(value))
    return _code(value)


def _default(field: Any) -> str:
    from pydantic import BaseModel

    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "its fields' defaults"
    return _toml(value)


def _preset_table(presets: dict[str, Any], title: str) -> list[str]:
    names = list(presets)
    lines = [f"| {title} field | type | " + " | ".join(f"`{n}`" for n in names) + " |"]
    lines.append("|---|---|" + "---|" * len(names))
    hints = typing.get_type_hints(type(next(iter(presets.values()))))
    for f in dataclasses.fields(next(iter(presets.values()))):
        values = [_toml(getattr(presets[n], f.name)) for n in names]
        lines.append(f"| `{f.name}` | {_cell(_type_name(hints[f.name]))} | " + " | ".join(values) + " |")
    return lines


def spec_reference_md() -> str:
    """The spec-file reference page: every table and field, the built-in specs, the presets."""
    from koopmanlens.kae.trainer import KAE_PRESETS, KAEConfig
    from koopmanlens.spec import builtin_specs, load_spec
    from koopmanlens.subject import SUBJECT_PRESETS, SubjectConfig

    out = [
        "# Spec-file reference",
        "",
        "Generated from the pydantic classes of `koopmanlens.spec` (and the presets in",
        "`koopmanlens.subject` and `koopmanlens.kae.trainer`) at every build of this site: it lists",
        "exactly what the code accepts. A field outside its table, a value of the wrong type or out of",
        "range, or a field that does not apply to the chosen `source` / `kind` is refused with one",
        "message naming it. How to use a spec file: [Spec files](../specs.md).",
        "",
    ]
    for table, cls in spec_tables():
        docs = field_docstrings(cls)
        out += [f"## {table}", "", _rst_to_md(inspect.cleandoc(cls.__doc__ or "")), ""]
        out += ["| field | type | default | allowed values | meaning |", "|---|---|---|---|---|"]
        for name, field in cls.model_fields.items():
            allowed = ", ".join(f"`{a}`" for a in _allowed(field.annotation)) or ""
            row = [
                f"`{name}`",
                _cell(_type_name(field.annotation)),
                _default(field),
                allowed,
                _cell(_rst_to_md(docs.get(name, ""))),
            ]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    out += ["## Built-in specs", "", "`koopmanlens spec NAME` prints one as TOML.", ""]
    out += ["| name | description | data | network | KAE preset | seeds |", "|---|---|---|---|---|---|"]
    for name in builtin_specs():
        spec, _ = load_spec(name)
        net = spec.network.preset or spec.network.factory
        out.append(
            f"| `{name}` | {_cell(spec.description)} | `{spec.data.source}` | `{net}` | "
            f"`{spec.kae.preset}` | {spec.seeds} |"
        )
    out += [
        "",
        "## Network presets (`network.preset`, `network.overrides`)",
        "",
        "`network.overrides` changes any of these fields of `SubjectConfig` (kind `resmlp` only).",
        "",
        *_preset_table(SUBJECT_PRESETS, "SubjectConfig"),
        "",
        "## KAE presets (`kae.preset`, `kae.overrides`)",
        "",
        "`kae.overrides` changes any of these fields of `KAEConfig` (lists become tuples);",
        "[`KAEConfig`][koopmanlens.kae.trainer.KAEConfig] says what each one does.",
        "",
        *_preset_table(KAE_PRESETS, "KAEConfig"),
        "",
    ]
    assert {f.name for f in dataclasses.fields(SubjectConfig)} and {
        f.name for f in dataclasses.fields(KAEConfig)
    }
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- cli


def cli_command():
    """The click group behind the typer app (every command registered)."""
    import typer

    from koopmanlens.cli import app

    return typer.main.get_command(app)


def _param_type(param: Any) -> str:
    """The parameter's type, from typer's annotation (typer >= 0.20 carries its own click) or from
    click's type object (older typer)."""
    import enum

    desc = getattr(param, "type_descriptor", None)
    ann = getattr(desc, "annotation", None)
    if ann is None:  # older typer: a click parameter
        t = param.type
        if getattr(t, "choices", None):
            return " \\| ".join(f"`{c}`" for c in t.choices)
        ann = {"integer": int, "float": float, "boolean": bool, "path": Path}.get(getattr(t, "name", ""), str)
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return " \\| ".join(f"`{m.value}`" for m in ann)
    if ann is bool:
        return "flag"
    name = {int: "integer", float: "number", str: "text"}.get(ann) or ("path" if ann is Path else str(ann))
    low = getattr(param, "min", None)
    return f"{name} >= {low}" if low is not None else name


def _param_default(param: Any) -> str:
    default = param.default
    if param.required:
        return "**required**"
    if default is None:
        return ""
    if param.secondary_opts and isinstance(default, bool):
        return _code(param.opts[0] if default else param.secondary_opts[0])
    if isinstance(default, bool):
        return "on" if default else "off"
    return _code(getattr(default, "value", default))


def _is_argument(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def cli_reference_md() -> str:
    """The command-line reference page: every command with its usage, parameters and examples."""
    group = cli_command()
    out = [
        "# Command-line reference",
        "",
        "Generated from the typer app `koopmanlens.cli.app` at every build of this site; `koopmanlens",
        "COMMAND --help` prints the same. Bad input ends with one message and exit code 2.",
        "",
        _rst_to_md(inspect.cleandoc(group.help or "")),
        "",
        "```text",
        "koopmanlens [--version] [--help] COMMAND [ARGS]...",
        "```",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    names = list(group.commands)
    for name in names:
        first = _rst_to_md(inspect.cleandoc(group.commands[name].help or "")).split("\n\n")[0]
        out.append(f"| [`{name}`](#{name}) | {_cell(first)} |")
    out.append("")
    for name in names:
        cmd = group.commands[name]
        args = [
            p.name.upper() if p.required else f"[{p.name.upper()}]" for p in cmd.params if _is_argument(p)
        ]
        out += [f"## {name}", "", _rst_to_md(inspect.cleandoc(cmd.help or "")), ""]
        out += ["```text", " ".join(["koopmanlens", name, "[OPTIONS]", *args]), "```", ""]
        out += ["| parameter | type | default | help |", "|---|---|---|---|"]
        for param in cmd.params:
            if _is_argument(param):
                label = f"`{param.name.upper()}` (argument)"
            else:
                label = " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
            help_text = _rst_to_md(getattr(param, "help", None) or "")
            row = [label, _param_type(param), _param_default(param), _cell(help_text)]
            out.append("| " + " | ".join(row) + " |")
        out += ["| `--help` | flag | | Show the command's help and exit. |", ""]
        if cmd.epilog:
            examples = [ln.strip() for ln in cmd.epilog.splitlines() if ln.strip().startswith("koopmanlens")]
            out += ["Examples:", "", "```bash", *examples, "```", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- api


def _home(name: str, obj: Any) -> str | None:
    """The module whose API page documents ``obj`` (a public module, or where it is defined)."""
    rendered = {m for _, _, mods in API_PAGES for m in mods}
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    module = getattr(obj, "__module__", None)
    return module if module in rendered else None


def api_index_md() -> str:
    """``reference/index.md``: every name of ``koopmanlens.__all__`` linked to its entry."""
    import koopmanlens as kl

    pages = {m: page for page, _, mods in API_PAGES for m in mods}
    out = [
        "# API reference",
        "",
        "Generated from the docstrings at every build of this site. `import koopmanlens as kl` gives",
        "these names (`koopmanlens.__all__`); the pages on the left document each public module.",
        "",
        "| `kl.` name | what it is | documented in |",
        "|---|---|---|",
    ]
    for name in kl.__all__:
        obj = getattr(kl, name)
        home = _home(name, obj)
        doc = _rst_to_md(inspect.getdoc(obj) or "").split("\n\n")[0]
        if isinstance(obj, types.ModuleType):
            target = obj.__name__
            pagename = pages.get(target) or pages.get(
                next((m for m in pages if m.startswith(target + ".")), "")
            )
        else:
            target = f"{home}.{obj.__name__}"
            pagename = pages.get(home or "")
        link = f"[`{name}`][{target}]" if home else f"`{name}`"
        where = f"[{pagename}](api/{pagename}.md)" if pagename else ""
        out.append(f"| {link} | {_cell(doc)} | {where} |")
    out += ["", "Modules outside `__all__` documented here: " + ", ".join(
        f"[`{title}`](api/{page}.md)" for page, title, _ in API_PAGES
        if not any(title == f"koopmanlens.{n}" for n in kl.__all__)
    ) + ".", ""]  # fmt: skip
    return "\n".join(out)


def api_page_md(page: str) -> str:
    """One API page: mkdocstrings renders each module; a package that re-exports its submodules'
    names shows only its docstring (the submodules follow)."""
    title, modules = next((t, m) for p, t, m in API_PAGES if p == page)
    out = [f"# `{title}`", ""]
    for module in modules:
        out += [f"::: {module}"]
        if any(m.startswith(module + ".") for m in modules):
            out += ["    options:", "      members: false"]
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- tutorials

_CELL = re.compile(r"^# %%(.*)$")


def tutorial_cells(text: str) -> list[tuple[str, str]]:
    """The cells of a jupytext percent-format script: ``("markdown" | "code", source)``."""
    cells: list[tuple[str, list[str]]] = []
    kind, lines = "code", []
    for line in text.splitlines():
        m = _CELL.match(line)
        if m:
            cells.append((kind, lines))
            kind, lines = ("markdown" if "[markdown]" in m.group(1) else "code"), []
        else:
            lines.append(line)
    cells.append((kind, lines))
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            src = "\n".join(ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines)
        else:
            src = "\n".join(lines)
        if src.strip():
            out.append((kind, src.strip("\n")))
    return out


def tutorial_md(path: Path) -> str:
    """A tutorial script as a page; the first markdown cell (its title) comes first."""
    cells = tutorial_cells(path.read_text())
    out: list[str] = []
    if cells and cells[0][0] == "code" and cells[0][1].lstrip().startswith('"""'):
        cells = cells[1:]  # the module docstring repeats the title
    for i, (kind, src) in enumerate(cells):
        if kind == "markdown":
            out += [src, ""]
            if i == 0:
                out += [
                    f"*This page is the script [`docs/tutorials/{path.name}`]({path.name}) (jupytext",
                    f"percent format: open it as a notebook, or run `python {path.name}`);",
                    "`tests/test_tutorials.py` runs it on every test run.*",
                    "",
                ]
        else:
            out += ["```python", src, "```", ""]
    return "\n".join(out)


def tutorials() -> list[Path]:
    return sorted(TUTORIALS.glob("[0-9]*.py"))


# -------------------------------------------------------------------------------------------- checks


def generated_pages() -> dict[str, str]:
    """Every generated page: path under docs/ -> markdown."""
    pages = {
        "reference/index.md": api_index_md(),
        "reference/spec-fields.md": spec_reference_md(),
        "reference/cli.md": cli_reference_md(),
    }
    for page, _, _ in API_PAGES:
        pages[f"reference/api/{page}.md"] = api_page_md(page)
    for path in tutorials():
        pages[f"tutorials/{path.stem}.md"] = tutorial_md(path)
    return pages


def missing_from_reference(pages: dict[str, str]) -> list[str]:
    """Public names, modules, CLI commands and options and spec fields that the pages leave out."""
    import koopmanlens as kl

    missing = []
    index = pages["reference/index.md"]
    for name in kl.__all__:
        if f"[`{name}`]" not in index:
            missing.append(f"koopmanlens.{name} (reference/index.md)")
        obj = getattr(kl, name)
        home = _home(name, obj)
        api = [text for key, text in pages.items() if key.startswith("reference/api/")]
        if home is None:
            missing.append(f"koopmanlens.{name}: its module is on no API page")
        elif isinstance(obj, types.ModuleType) and not any(f"::: {home}\n" in text for text in api):
            missing.append(f"module {home}: no API page renders it")
    for page, _, modules in API_PAGES:
        for module in modules:
            if f"::: {module}" not in pages[f"reference/api/{page}.md"]:
                missing.append(f"module {module} (reference/api/{page}.md)")
    cli = pages["reference/cli.md"]
    group = cli_command()
    for name, cmd in group.commands.items():
        if f"## {name}\n" not in cli:
            missing.append(f"command {name} (reference/cli.md)")
        section = cli.split(f"## {name}\n", 1)[-1].split("\n## ", 1)[0]
        for param in cmd.params:
            labels = [f"`{param.name.upper()}` (argument)"] if _is_argument(param) else [
                f"`{o}`" for o in [*param.opts, *param.secondary_opts]
            ]  # fmt: skip
            missing += [f"{name} {label} (reference/cli.md)" for label in labels if label not in section]
    spec = pages["reference/spec-fields.md"]
    for table, cls in spec_tables():
        for field in cls.model_fields:
            if f"| `{field}` |" not in spec.split(f"## {table}\n", 1)[-1]:
                missing.append(f"spec field {table} {field} (reference/spec-fields.md)")
    return missing


# ---------------------------------------------------------------------------------------- mkdocs hook


def on_files(files, config):
    """Add the generated pages to the site; refuse to build when the reference misses a name."""
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    pages = generated_pages()
    missing = missing_from_reference(pages)
    if missing:
        raise PluginError("the generated reference misses: " + "; ".join(missing))
    for uri, text in pages.items():
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, uri, content=text))
    return files


_ROLE = re.compile(r":(?:class|func|mod|meth|attr|data|exc):<code>(~?)([^<]+)</code>")


def on_page_content(html_text: str, page, config, files) -> str:
    """Docstrings written for Sphinx (``:class:`~a.B```) show their target as code (``~``: the last
    part of the name only, as Sphinx does)."""
    return _ROLE.sub(
        lambda m: f"<code>{m.group(2).split('.')[-1] if m.group(1) else m.group(2)}</code>", html_text
    )
