"""Dependencies point one way: the package layout of docs/architecture.md, checked on the source.

``common`` (the wire contract, encodings, files and processes) below everything;
``privacy`` over ``common``; ``models`` over both; ``clients``, ``server`` and
``simulations`` over all three; the ``lab`` (studies, benchmarks) beside them, over any,
and imported by none. No Flower (nor Ray) in ``common``, ``models`` or
``privacy``; the server never imports the site's code; the site never imports the
server's; and no two project modules import each other, not even through an import
inside a function or a module named in a string for ``importlib``.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from pathlib import Path

import pytest

from models import BUILTIN_MODELS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "privacy", "models", "clients", "server", "simulations", "lab")
FORBIDDEN = {
    "common": {"flwr", "ray", "privacy", "models", "clients", "server", "simulations", "lab"},
    "privacy": {"flwr", "ray", "models", "clients", "server", "simulations", "lab"},
    "models": {"flwr", "ray", "clients", "server", "simulations", "lab"},
    "clients": {"server", "simulations", "lab"},
    "server": {"clients", "simulations", "lab"},
    "simulations": {"lab"},
}


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the five packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (absolute names),
    and every project module it names in a string (what ``importlib`` would load)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and node.value in MODULE_NAMES:
            found.add(node.value)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = project_modules()
MODULE_NAMES = frozenset(name for name in MODULES if "." in name)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_only_what_lies_below_it(package: str) -> None:
    offences = [
        f"{name} imports {imported}"
        for name, path in MODULES.items()
        if name.split(".")[0] == package
        for imported in sorted(imports_of(path))
        if imported.split(".")[0] in FORBIDDEN[package]
    ]
    assert offences == []


@pytest.mark.parametrize("model", BUILTIN_MODELS)
def test_a_model_package_imports_no_other_model(model: str) -> None:
    """One model, one package: what two models share lives in ``models/`` itself."""
    others = {f"models.{other}" for other in BUILTIN_MODELS if other != model}
    offences = [
        f"{name} imports {imported}"
        for name, path in MODULES.items()
        if name == f"models.{model}" or name.startswith(f"models.{model}.")
        for imported in sorted(imports_of(path))
        if any(imported == other or imported.startswith(f"{other}.") for other in others)
    ]
    assert offences == []


WHEEL = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"][
    "wheel"
]


def left_out_of_the_wheel(path: Path) -> bool:
    """Whether the wheel excludes ``path`` (its ``exclude`` patterns, as hatch matches them)."""
    relative = path.relative_to(ROOT).as_posix()
    return any(fnmatch.fnmatch(relative, pattern) for pattern in WHEEL["exclude"])


def test_what_the_wheel_installs_imports_nothing_it_leaves_out() -> None:
    """The research side of the models (studies, validation splits, baselines) stays in the
    source checkout: a site or server that imported it would fail once installed."""
    left_out = {name for name, path in MODULES.items() if left_out_of_the_wheel(path)}
    assert {"models.study", "models.churn.study", "models.recommender.baselines"} <= left_out
    offences = [
        f"{name} imports {imported}"
        for name, path in MODULES.items()
        if name.split(".")[0] in WHEEL["packages"] and name not in left_out
        for imported in sorted(imports_of(path))
        if imported in left_out
    ]
    assert offences == []


def test_no_two_project_modules_import_each_other() -> None:
    graph = {
        name: {imported for imported in imports_of(path) if imported in MODULES} - {name}
        for name, path in MODULES.items()
    }
    cycles = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for imported in sorted(graph[name]):
            if state.get(imported) == "open":
                cycles.append([*trail[trail.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*trail, imported])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # A package's __init__ naming its own submodules is not a cycle between modules.
    cycles = [c for c in cycles if not any(c[0].startswith(f"{m}.") for m in c[1:])]
    assert cycles == []


def test_the_checker_sees_function_level_and_from_imports(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text(
        "import a.b\nfrom c import d\n\ndef f():\n    from flwr.app import Message\n"
        "    return importlib.import_module('simulations.jobs')\n"
    )
    assert imports_of(source) == {
        "a.b",
        "c",
        "c.d",
        "flwr.app",
        "flwr.app.Message",
        "simulations.jobs",
    }


def code_words(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every identifier, attribute, imported name and string constant in
    ``path``'s code: docstrings and comments are prose, not references."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and (body := node.body)
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    }
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings:
                words.append((node.lineno, node.value))
        elif isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, ast.alias):
            words.append((node.lineno, node.name))
        elif isinstance(node, ast.ImportFrom) and node.module:
            words.append((node.lineno, node.module))
    return words


def test_server_and_clients_find_the_real_models_only_through_the_registry() -> None:
    named = [
        f"{path.relative_to(ROOT)}:{line}: {word!r}"
        for package in ("server", "clients")
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, word in code_words(path)
        if any(model in word.lower() for model in ("recommender", "churn", "nextbasket"))
    ]
    assert named == []
