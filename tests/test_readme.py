"""The README's ```python blocks, then docs/api.md's, run as written, one after the other in one
namespace (docs/api.md continues the README's quick start), in a temporary working directory (they
write ``runs/...``)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
API = ROOT / "docs" / "api.md"


def python_blocks(path: Path = README) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = [("README.md", b) for b in python_blocks()] + [("docs/api.md", b) for b in python_blocks(API)]
    assert [name for name, _ in blocks].count("README.md") >= 1 and len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for i, (name, block) in enumerate(blocks):
        exec(compile(block, f"{name} python block {i + 1}", "exec"), namespace)
    assert (tmp_path / "runs" / "mine" / "run.json").exists()
