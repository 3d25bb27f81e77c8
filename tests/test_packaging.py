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


def test_dependency_floors_provide_the_apis_the_code_calls():
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python = SpecifierSet(project["requires-python"])
    assert "3.10" not in python and "3.11" in python  # tomllib (these tests) is 3.11+
    requirements = {r.name: r for r in map(Requirement, project["dependencies"])}
    floors = {name: max((Version(s.version) for s in r.specifier if s.operator == ">="), default=None)
              for name, r in requirements.items()}
    assert floors["optuna"] >= Version("5.0")  # Trial.set_constraint (search/optuna_search.py)
    assert floors["ray"] >= Version("2.41")  # ray.tune.report(dict), ray.tune.RunConfig (search/ray_search.py)
    for name in ("optuna", "ray"):  # what is installed here meets the range
        assert requirements[name].specifier.contains(version(name), prereleases=True), name


def test_public_names_are_exported():
    for name in nasbert.__all__:
        assert hasattr(nasbert, name), name


def test_docstring_examples_run():
    import nasbert.export.cuts
    import nasbert.modeling.configuration_nasbert

    for module in (nasbert, nasbert.space, nasbert.export.cuts, nasbert.modeling.configuration_nasbert):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__
