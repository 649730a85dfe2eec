"""The layout shows the architecture: imports point one way (drivers know nothing of kiosk or sim;
kiosk reaches sim only lazily inside a function), every module says what it owns and stays under
800 lines, only the CLI prints, config/ holds no Python, and the README documents every command.

Imports are read with ast, so comments and strings that mention a package do not count.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import subcommands

from drivers.base import ACCEPTOR_DRIVERS
from kiosk import cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kiosk", "drivers", "sim")
MAX_LINES = 800


def python_files(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imports(tree: ast.AST) -> Iterator[tuple[ast.stmt, str]]:
    """(node, module) for every absolute import, and for importlib calls with a literal name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node, node.module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node, node.args[0].value


def top_package(module: str) -> str:
    return module.split(".")[0]


def parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def inside_function(node: ast.AST, parent_of: dict[ast.AST, ast.AST]) -> bool:
    while node in parent_of:
        node = parent_of[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return True
    return False


# --- import direction ---------------------------------------------------------------------------


def test_the_packages_hold_python_files() -> None:
    for pkg in PACKAGES:
        assert (ROOT / pkg / "__init__.py").is_file(), pkg
    assert len(python_files("drivers")) >= 3


@pytest.mark.parametrize("path", python_files("drivers"), ids=rel)
def test_drivers_never_import_kiosk_or_sim(path: Path) -> None:
    wrong = [
        f"line {node.lineno}: {module}"
        for node, module in imports(parse(path))
        if top_package(module) in ("kiosk", "sim")
    ]
    assert wrong == []


def test_acceptor_back_ends_are_looked_up_in_drivers() -> None:
    refs = [ref for pair in ACCEPTOR_DRIVERS.values() for ref in pair]
    assert refs
    assert all(top_package(ref.partition(":")[0]) == "drivers" for ref in refs), refs


@pytest.mark.parametrize("path", python_files("kiosk"), ids=rel)
def test_kiosk_imports_sim_only_inside_functions(path: Path) -> None:
    tree = parse(path)
    parent_of = parents(tree)
    at_module_level = [
        f"line {node.lineno}: {module}"
        for node, module in imports(tree)
        if top_package(module) == "sim" and not inside_function(node, parent_of)
    ]
    assert at_module_level == []


def test_the_import_scanner_sees_the_clis_lazy_sim_import() -> None:
    """Guards the test above: a scanner that found nothing would pass vacuously."""
    tree = parse(ROOT / "kiosk" / "cli.py")
    parent_of = parents(tree)
    lazy = [node for node, module in imports(tree) if top_package(module) == "sim"]
    assert lazy and all(inside_function(node, parent_of) for node in lazy)
    module_level = [node for node, module in imports(tree) if module == "kiosk.errors"]
    assert module_level and not any(inside_function(n, parent_of) for n in module_level)


# --- modules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", python_files(*PACKAGES), ids=rel)
def test_every_module_has_a_docstring_and_stays_short(path: Path) -> None:
    docstring = ast.get_docstring(parse(path))
    assert docstring and docstring.strip(), f"{rel(path)} has no module docstring"
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines < MAX_LINES, f"{rel(path)} has {lines} lines"


CLI = ("kiosk/cli.py", "kiosk/tech.py")  # the command and its technician's subcommands
PRINT_FREE = [p for p in python_files("kiosk", "drivers") if rel(p) not in CLI]


@pytest.mark.parametrize("path", PRINT_FREE, ids=rel)
def test_only_the_cli_prints(path: Path) -> None:
    prints = [
        node.lineno
        for node in ast.walk(parse(path))
        if isinstance(node, ast.Name) and node.id == "print"
    ]
    assert prints == [], f"{rel(path)} uses print on lines {prints}; log instead"


@pytest.mark.parametrize("name", CLI)
def test_the_print_scanner_sees_the_clis_prints(name: str) -> None:
    tree = parse(ROOT / name)
    assert any(isinstance(n, ast.Name) and n.id == "print" for n in ast.walk(tree))


def test_config_holds_data_not_python() -> None:
    assert (ROOT / "config" / "sim.toml").is_file()
    assert list((ROOT / "config").rglob("*.py")) == []


# --- documentation ------------------------------------------------------------------------------


def test_every_cli_command_is_in_the_readme() -> None:
    readme = ROOT / "README.md"
    assert readme.is_file(), "README.md is missing"
    text = readme.read_text(encoding="utf-8")
    commands = subcommands(cli.parser())
    assert ("config", "check") in commands
    missing = [
        " ".join(path)
        for path in commands
        if not re.search(r"\bkiosk\s+" + r"\s+".join(map(re.escape, path)) + r"\b", text)
    ]
    assert missing == [], "README.md does not show " + ", ".join(f"`kiosk {m}`" for m in missing)
