"""`python -m server pull HUB_ID`: a model into the Hugging Face cache, with progress, so that a
`source: {hub: HUB_ID}` entry later starts without waiting for a download (or offline, with
HF_HUB_OFFLINE=1).

`--from DIR` (or `file://DIR`) imports a checkpoint directory copied onto the machine instead,
in the cache's own layout (models--org--name/snapshots/<revision>, refs/main): the way to bring a
model into an air-gapped machine and still refer to it by its hub id."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tqdm import tqdm


class PullError(Exception):
    pass


def pull(hub_id: str, revision: str | None = None, source: str | None = None) -> Path:
    """The snapshot folder the model now lies in."""
    if "/" not in hub_id.strip("/") and source is None:
        raise PullError(f"{hub_id!r} is not a hub id (owner/name)")
    if source is not None:
        return import_directory(hub_id, _local_path(source), revision)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(hub_id, revision=revision))  # shows a progress bar per file


def _local_path(source: str) -> Path:
    if source.startswith("file://"):
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise PullError(f"{source}: only local file:// URLs are read")
        source = unquote(parts.path)
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise PullError(f"{path} is not a checkpoint directory (it has no config.json)")
    return path


def import_directory(hub_id: str, folder: Path, revision: str | None = None) -> Path:
    from huggingface_hub.constants import HF_HUB_CACHE

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    # A revision the directory itself names (its content), so importing it again is a no-op.
    digest = hashlib.sha1()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{int(stat.st_mtime)}".encode())
    commit = digest.hexdigest()
    repo = Path(HF_HUB_CACHE) / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    total = sum(p.stat().st_size for p in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"importing {hub_id}") as bar:
        for path in files:
            target = snapshot / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() or target.stat().st_size != path.stat().st_size:
                tmp = target.with_name(target.name + ".part")
                shutil.copyfile(path, tmp)
                tmp.replace(target)
            bar.update(path.stat().st_size)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / (revision or "main")).write_text(commit, encoding="utf-8")
    return snapshot
