"""The package list in pyproject.toml is written by hand (search_spaces/ is mapped into the package)."""

from __future__ import annotations

import doctest
import tomllib
from pathlib import Path

import nasbert
import nasbert.space

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "nasbert").rglob("__init__.py")}
    assert on_disk | {"nasbert.search_spaces"} == listed


def test_public_names_are_exported():
    for name in nasbert.__all__:
        assert hasattr(nasbert, name), name


def test_docstring_examples_run():
    for module in (nasbert, nasbert.space):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__
