"""`python -m server pull`: a checkpoint directory imported into the Hugging Face cache loads by
its hub id offline; a hub id that cannot be fetched here fails with a message, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import REPO


def run(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=environment, capture_output=True, text=True, timeout=300
    )


def test_an_imported_directory_loads_by_its_hub_id_offline(tiny_model_dir: Path, tmp_path: Path) -> None:
    pulled = run(["-m", "server", "pull", "local/tiny-llama", "--from", f"file://{tiny_model_dir}"], tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    assert "importing local/tiny-llama" in pulled.stderr  # the progress bar
    again = run(["-m", "server", "pull", "local/tiny-llama", "--from", str(tiny_model_dir)], tmp_path)
    assert again.returncode == 0  # the same content: the same snapshot
    snapshots = list((tmp_path / "hub" / "models--local--tiny-llama" / "snapshots").iterdir())
    assert len(snapshots) == 1
    load = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "AutoTokenizer.from_pretrained('local/tiny-llama')\n"
        "print(type(AutoModelForCausalLM.from_pretrained('local/tiny-llama')).__name__)\n"
    )
    loaded = run(["-c", load], tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "LlamaForCausalLM"


def test_a_hub_id_that_cannot_be_fetched_fails_cleanly(tmp_path: Path) -> None:
    failed = run(["-m", "server", "pull", "nobody/does-not-exist"], tmp_path)
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: nobody/does-not-exist:") and "Traceback" not in failed.stderr


def test_a_directory_without_a_checkpoint_is_refused(tmp_path: Path) -> None:
    failed = run(["-m", "server", "pull", "local/x", "--from", str(tmp_path)], tmp_path)
    assert failed.returncode == 2 and "no config.json" in failed.stderr
