"""`ptgym envs new NAME` writes a package that installs, registers by entry point and passes its
own tests — checked end to end with real pip, the real console script and real pytest.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ptgym.scaffold import ScaffoldError, new_env_package, placeholders

NAME = "scaffold-probe"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_names_derive_from_the_short_name():
    assert placeholders("word-reverse") == {
        "name": "word-reverse",
        "dist": "ptgym-env-word-reverse",
        "package": "ptgym_env_word_reverse",
        "camel": "WordReverse",
        "cls": "WordReverseEnv",
        "env_id": "word-reverse/WordReverse-v0",
    }
    assert placeholders("GridEnv")["cls"] == "GridEnv"


def test_writes_the_package_files(tmp_path):
    root = new_env_package("word-reverse", tmp_path)
    assert root == tmp_path / "ptgym-env-word-reverse"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "ptgym_env_word_reverse/__init__.py",
        "ptgym_env_word_reverse/env.py",
        "pyproject.toml",
        "tests/test_env.py",
    ]
    pyproject = (root / "pyproject.toml").read_text()
    assert '[project.entry-points."ptgym.envs"]' in pyproject
    assert 'word-reverse = "ptgym_env_word_reverse.env:WordReverseEnv"' in pyproject
    assert 'dependencies = ["ptgym"]' in pyproject
    env_py = (root / "ptgym_env_word_reverse/env.py").read_text()
    assert 'env_id = "word-reverse/WordReverse-v0"' in env_py
    for section in (
        "Description",
        "Action Space",
        "Observation Space",
        "Rewards",
        "Episode End",
        "Arguments",
        "Version History",
    ):
        assert f"## {section}" in env_py
    assert "$" not in env_py + pyproject  # every placeholder was filled


def test_refuses_to_overwrite_an_existing_folder(tmp_path):
    (tmp_path / "ptgym-env-word-reverse").mkdir()
    with pytest.raises(ScaffoldError, match="ptgym-env-word-reverse already exists"):
        new_env_package("word-reverse", tmp_path)
    assert list((tmp_path / "ptgym-env-word-reverse").iterdir()) == []


@pytest.mark.parametrize("bad", ["", "9lives", "my env", "a/b", "x.y", "-dash"])
def test_rejects_a_name_and_states_the_rule(tmp_path, bad):
    with pytest.raises(
        ScaffoldError, match="use letters, digits, '-' and '_', starting with a letter"
    ):
        new_env_package(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_rejects_the_name_of_an_existing_env(tmp_path):
    with pytest.raises(ScaffoldError, match=r"'digits' already exists \(ptgym/Digits-v0"):
        new_env_package("digits", tmp_path)


def test_cli_reports_a_bad_name_without_a_traceback(tmp_path):
    result = run("ptgym", "envs", "new", "9lives", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("ptgym envs new: error: invalid env name '9lives'")
    assert "Traceback" not in result.stderr


@pytest.fixture
def installed_package(tmp_path):
    """The scaffolded package, `pip install -e`'d into this interpreter; uninstalled afterwards."""
    result = run("ptgym", "envs", "new", NAME, "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    root = tmp_path / f"ptgym-env-{NAME}"
    assert f"wrote {root}" in result.stdout
    pip = [sys.executable, "-m", "pip"]
    install = run(*pip, "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(root))
    assert install.returncode == 0, install.stderr
    try:
        yield root
    finally:
        run(*pip, "uninstall", "-y", "-q", f"ptgym-env-{NAME}")


@pytest.mark.slow
def test_installed_package_is_listed_made_and_passes_its_tests(installed_package, tmp_path):
    listing = run("ptgym", "envs", "list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    columns = (
        rf"{NAME}\s+scaffold-probe/ScaffoldProbe-v0\s+"
        r"entry point \(ptgym-env-scaffold-probe\)\s+Reverse a word"
    )
    assert re.search(columns, listing.stdout), listing.stdout

    script = (
        "import gymnasium, ptgym\n"
        "ptgym.registry.load_entry_points()\n"
        "env = gymnasium.make('scaffold-probe/ScaffoldProbe-v0')\n"
        "obs, info = env.reset(seed=3)\n"
        "print(type(env.unwrapped).__name__, env.step(info['answer'])[1:3])\n"
    )
    made = run(sys.executable, "-c", script, cwd=tmp_path)
    assert made.stdout == "ScaffoldProbeEnv (1.0, True)\n", made.stderr

    pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    tests = run(*pytest_cmd, cwd=installed_package)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "8 passed" in tests.stdout
