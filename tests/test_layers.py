"""The layering contract of DESIGN.md, checked with import-linter over the whole package.

The package is installed from several top-level folders (setuptools ``package-dir``), which
import-linter cannot follow in an editable install, so the test lays the package out as it is
installed (a copy under a temporary folder) and runs ``lint-imports`` on that copy with the
contracts in ``pyproject.toml``.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def installed_layout(target: Path) -> Path:
    """Copy every package of ``pyproject.toml`` to where it lives once installed; returns ``target``."""
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = setup["package-dir"]
    for package in setup["packages"]:
        parent = max((p for p in roots if package == p or package.startswith(p + ".")), key=len)
        source = REPO / roots[parent] / Path(*package.split(".")[len(parent.split(".")):])
        dest = target / Path(*package.split("."))
        dest.mkdir(parents=True, exist_ok=True)
        for module in source.glob("*.py"):
            shutil.copy2(module, dest / module.name)
    return target


def lint(tree: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    lint_imports = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint_imports), "--config", str(config)], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=300)


def test_every_layer_contract_holds_over_the_whole_package(tmp_path):
    tree = installed_layout(tmp_path / "site")
    roots = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    in_repo = sum(len(list((REPO / root).rglob("*.py"))) - len(list((REPO / root).rglob("__pycache__/*.py")))
                  for root in roots)
    assert len(list(tree.rglob("*.py"))) == in_repo  # every module of the package: none left out of `packages`
    proc = lint(tree, REPO / "pyproject.toml")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken" in proc.stdout


def test_the_checker_catches_a_reward_that_imports_an_env(tmp_path):
    tree = installed_layout(tmp_path / "site")
    planted = tree / "duplexgym" / "rewards" / "pause.py"
    planted.write_text(planted.read_text() + "\nfrom duplexgym.envs.replay import DuplexReplayEnv  # noqa\n")
    proc = lint(tree, REPO / "pyproject.toml")
    assert proc.returncode != 0 and "duplexgym.rewards.pause -> duplexgym.envs.replay" in proc.stdout
