"""The command line: a broken models.yaml stops start-up naming file, entry and field."""

import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_broken_config_stops_startup(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  - id: m\n    source: {path: /x}\n    dtype: float7\n", encoding="utf-8")
    result = _run("serve", "--config", str(config), "--port", "1")
    assert result.returncode == 2
    assert (
        str(config) in result.stderr and "models[0] (id 'm')" in result.stderr and "'dtype'" in result.stderr
    )


def test_unloadable_model_stops_the_server(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    store = f"server:\n  store_url: sqlite:///{tmp_path / 'store.sqlite3'}\n"
    config.write_text(
        f"models:\n  - id: m\n    source: {{path: {tmp_path / 'missing'}}}\n{store}", encoding="utf-8"
    )
    result = _run("serve", "--config", str(config), "--port", "0")
    assert result.returncode == 1
    assert "neither a directory nor a .gguf file" in result.stderr


def test_models_command_lists_the_default_model() -> None:
    result = _run("models", "--config", "models.yaml")
    assert result.returncode == 0 and "smollm2-135m-instruct" in result.stdout
