"""The wheel installs ``specmd_env`` alone, with the package data its commands read; the library never
imports the repository's top-level script folders (``agents/``, ``experiments/``)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "specmd_env"
SCRIPT_FOLDERS = {"agents", "experiments", "traces", "tests"}


def _imported_modules(path: Path) -> set[str]:
    """Modules a file imports: import statements and ``importlib.import_module("...")`` literals."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.add(node.args[0].value)
    return out


def test_library_never_imports_the_script_folders():
    offenders = {str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(path)
                                                     if m.split(".")[0] in SCRIPT_FOLDERS)
                 for path in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_cli_commands_live_in_the_package():
    from specmd_env.cli import COMMANDS

    assert all(module.startswith("specmd_env.") for module, _ in COMMANDS.values())


def test_script_folders_are_not_importable_outside_the_checkout(tmp_path):
    """From any other directory, the installed project offers ``specmd_env`` and nothing named agents."""
    code = ("import importlib.util, specmd_env.leaderboard.command, specmd_env.agents.evaluate; "
            "print(importlib.util.find_spec('agents'), importlib.util.find_spec('experiments'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None"]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    """Build the wheel from a clean copy of the checkout (a stale ``build/`` would leak into an in-place one)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "dist", "runs", "*.egg-info",
                                                            "__pycache__", ".pytest_cache", ".hypothesis", "*.nb[ic]"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "--wheel-dir", str(tmp / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("specmd_env-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_wheel_holds_specmd_env_alone(wheel_names):
    top = {name.split("/")[0] for name in wheel_names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"specmd_env"}


def test_wheel_ships_what_the_commands_read(wheel_names):
    from specmd_env.agents import TRAINED_DIR
    from specmd_env.agents.train import HYPERPARAMS_DIR

    names = set(wheel_names)
    committed = sorted(p.name for p in TRAINED_DIR.iterdir() if p.suffix in (".zip", ".json", ".npz"))
    assert committed and all(f"specmd_env/data/agents/{n}" in names for n in committed)
    hyper = sorted(p.name for p in HYPERPARAMS_DIR.glob("*.yml"))
    assert hyper and all(f"specmd_env/data/hyperparams/{n}" in names for n in hyper)
    for path in ("specmd_env/data/hardware.toml", "specmd_env/data/models.toml",
                 "specmd_env/data/traces/olmoe-synthetic.npz", "specmd_env/leaderboard/command.py",
                 "specmd_env/agents/learned.py"):
        assert path in names
