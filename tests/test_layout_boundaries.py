"""The package map of natra/ as import rules, read from the source with ast.

natra.cni (the plugin) and natra.kernel (bpf(2), netlink, tc) are what a
runtime runs on every Pod; natra.node holds the operator's tools; natra.lab
runs Pods without Kubernetes and is left out of the node bundle as a whole
package (packaging/natra.spec). The rules below are the ones each package's
__init__ docstring states. Imports inside functions count too: a lazy import
still needs the module in the build.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NATRA = ROOT / "natra"

# package -> packages of this repository it must never import
FORBIDDEN = {
    "natra.kernel": ("natra.cni", "natra.node", "natra.lab", "natra.reference", "natra.simulations"),
    "natra.cni": ("natra.node", "natra.lab", "natra.reference", "natra.simulations"),
    "natra.node": ("natra.lab", "natra.reference", "natra.simulations"),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported(path: Path, root: Path = ROOT) -> set[str]:
    """Every absolute module name `path` imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{alias.name}" for alias in node.names)  # `from natra import lab`
    return names


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_rule_allows(package):
    files = sources(package)
    assert files, f"{package} has no modules"
    broken = [f"{path.relative_to(ROOT)} imports {name}"
              for path in files for name in sorted(imported(path))
              for banned in FORBIDDEN[package] if within(name, banned)]
    assert not broken, "\n".join(broken)


def test_every_package_says_what_it_owns_and_may_import():
    for package in ("cni", "kernel", "node", "lab"):
        assert (NATRA / package / "__init__.py").is_file(), f"natra/{package} is not a package"
    for init in sorted(NATRA.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert doc, f"{init.relative_to(ROOT)} has no docstring"
        if init.parent.parent == NATRA:  # the four top-level packages carry the rule
            assert "import" in doc, f"{init.relative_to(ROOT)}: docstring does not say what it may import"


def test_no_module_left_flat_in_natra():
    flat = sorted(p.name for p in NATRA.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "cli.py"], flat


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    fake = tmp_path / "natra" / "kernel"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from ..lab import demo\n    import natra.cni.plan\n")
    names = imported(fake / "bad.py", root=tmp_path)
    assert "natra.lab.demo" in names and "natra.cni.plan" in names
