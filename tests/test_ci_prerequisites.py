"""Under CI (CI=true) a test whose prerequisite is missing (the browser, the MNIST files) fails
instead of skipping, so CI runs everything it claims to; elsewhere it skips with the reason."""

from __future__ import annotations

import shutil

import pytest
import test_report
from conftest import find_mnist_dir


def _outcome(fn, *args) -> type[BaseException]:
    with pytest.raises(BaseException) as info:  # Skipped and Failed are BaseExceptions
        fn(*args)
    return info.type


@pytest.mark.parametrize(("ci", "expected"), [("true", "fail"), ("", "skip"), (None, "skip")])
def test_missing_mnist_fails_under_ci(tmp_path, monkeypatch, ci, expected):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if expected == "fail" else pytest.skip.Exception
    assert _outcome(find_mnist_dir, tmp_path / "no-mnist") is outcome


@pytest.mark.parametrize(("ci", "expected"), [("true", "fail"), ("false", "skip")])
def test_missing_browser_fails_under_ci(monkeypatch, ci, expected):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if expected == "fail" else pytest.skip.Exception
    assert _outcome(test_report._driver) is outcome
