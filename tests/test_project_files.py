"""What a fresh clone's files promise (issue 25): one transformers range for the runtime and the
parity tests, `assemble --version`, a test suite that cleans its temporary folders, a README and
specs that point only at files a clone has and tell no development history."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from cli import assemble
from tests.oracle import TESTED_TRANSFORMERS

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_one_transformers_range_for_the_runtime_and_the_parity_tests():
    """The quick start installed transformers 5.25 while the parity tests were pinned below it."""
    requirements = re.findall(r'"transformers([^"]*)"', PYPROJECT)
    assert requirements == [TESTED_TRANSFORMERS]


def test_version():
    result = CliRunner().invoke(assemble, ["--version"])
    version = re.search(r'^version = "([^"]+)"', PYPROJECT, re.MULTILINE).group(1)
    assert result.exit_code == 0 and result.output == f"assemble {version}\n"


def test_the_suite_keeps_only_failed_tests_temporary_folders():
    """pytest keeps the last three runs' folders by default: about 14 GB of checkpoints here."""
    assert re.search(r'^tmp_path_retention_policy = "failed"$', PYPROJECT, re.MULTILINE)


def test_readme_and_specs_point_only_at_a_clone_and_tell_no_history():
    history = [r"\bissue \d+", r"\b(at|crashed at|fixed at) [0-9a-f]{7,40}\b", r"\b\d\d:\d\dZ\b"]
    for pattern in history:
        assert not re.search(pattern, README), f"README.md: development history ({pattern}) belongs in BENCHMARKS.md"
    for path in [ROOT / "README.md", *sorted((ROOT / "specs").glob("*.yaml"))]:
        text = path.read_text(encoding="utf-8")
        for outside in re.findall(r"(?:\.\./)+shared/\S*", text):
            raise AssertionError(f"{path.name} points outside a clone: {outside}")
