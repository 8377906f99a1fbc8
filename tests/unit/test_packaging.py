"""`pip install .` ships what `ollama-cloudrun deploy` needs: the build context and the command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTEXT_FILES = (".dockerignore", ".gcloudignore", "Dockerfile", "entrypoint.sh")

pytestmark = pytest.mark.slow  # building the wheel takes ~15 s


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(out)],
        check=True,
        cwd=out,
        timeout=300,
    )
    (built,) = out.glob("ollama_cloudrun-*.whl")
    return built


def test_wheel_carries_the_build_context_and_the_command(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in CONTEXT_FILES:
            packed = archive.read(f"tasks/ollama_backend/{name}")
            assert packed == (ROOT / "ollama-backend" / name).read_bytes()
        mode = archive.getinfo("tasks/ollama_backend/entrypoint.sh").external_attr >> 16
        assert mode & 0o111, "entrypoint.sh lost its executable bit"
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "ollama-cloudrun = flows.cli:main" in archive.read(entry_points).decode()
    assert not any(n.startswith("ollama-backend/") for n in names)


def test_installed_deploy_finds_its_build_context(wheel: Path, tmp_path: Path) -> None:
    """The wheel's own flows.deploy (not this checkout's) resolves a context that exists."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    probe = (
        "import flows.deploy as d, tasks.storage as s; "
        "print(d.__file__); print(d.DEFAULT_SOURCE_DIR); "
        "print(len(s.source_files(d.DEFAULT_SOURCE_DIR)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    module, context, count = result.stdout.split()[-3:]
    assert module.startswith(str(site))
    assert context == str(site / "tasks" / "ollama_backend")
    assert int(count) >= 2  # Dockerfile and entrypoint.sh (ignore files are not sent)
