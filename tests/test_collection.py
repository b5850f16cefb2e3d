"""The suite collects beside another distribution's top-level `tests` package (ciw installs one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def foreign_tests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a regular package named `tests`, as site-packages holds one when such a distribution is installed."""
    site = tmp_path_factory.mktemp("site")
    (site / "tests").mkdir()
    (site / "tests" / "__init__.py").write_text('"""Another distribution\'s tests."""\n')
    return site


@pytest.mark.parametrize("target", ["tests", "tests/live", "tests/model"])
def test_the_suite_collects_beside_a_foreign_tests_package(foreign_tests: Path, target: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(foreign_tests), os.environ.get("PYTHONPATH")]))}
    probe = subprocess.run(
        [sys.executable, "-c", "import tests; print(tests.__file__)"], cwd=foreign_tests.parent, env=env, capture_output=True, text=True
    )
    assert str(foreign_tests) in probe.stdout, "the foreign package must be importable, or this test checks nothing"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "error" not in done.stdout.lower().splitlines()[-1]
