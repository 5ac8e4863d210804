"""The project's own promises about itself: the README's commands, CI, and the environments agree."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import daskimg

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    assert readme.lstrip().startswith("# daskimg")
    section = readme.split("## Quick start", 1)[1]
    block = section.split("```", 2)[1]
    return [line for line in block.splitlines()[1:] if line.strip()]


def test_readme_quick_start_has_two_commands_and_ci_runs_the_second() -> None:
    demo, tests = quick_start_commands()
    assert "--demo" in demo
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [s for s in project["dependencies"] + extras["fast"] + extras["test"] if not s.startswith("daskimg")]
    env = (ROOT / "environment.yml").read_text().lower()

    def norm(spec: str) -> str:
        return re.sub(r"\[.*?\]", "", spec).lower().replace(" ", "")

    for spec in wanted:
        spec = norm(spec)
        assert f"- {spec}" in env, f"environment.yml lacks {spec}"
    assert "- distributed" + norm(next(s for s in wanted if s.startswith("dask")))[4:] in env


def test_public_api_is_pinned() -> None:
    assert daskimg.__all__ == sorted(daskimg.__all__)
    assert set(daskimg.__all__) == {
        "Batch", "ClusterError", "ConfigError", "DaskimgError", "FetchOptions", "ImageReader", "InputError", "Job",
        "OutputError", "PreprocessOptions", "Report", "Status", "Summary", "__version__", "open", "read_urls", "report",
    }


def test_the_benchmark_a_user_runs_works(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--count", "40", "--files", "20", "--size", "32",
         "--only", "limit,daskimg", "--warmup", "10", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "daskimg / limit:" in done.stdout


def test_the_reader_benchmark_a_user_runs_works(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "reader.py"), "--count", "40", "--files", "20", "--size", "32",
         "--passes", "1", "--rows", "10", "--img2dataset", "", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reader / chunks:" in done.stdout
