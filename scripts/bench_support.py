"""What the small benchmark scripts share: a server of their own, and their results written out."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import config_with_store, serving  # noqa: E402


@contextmanager
def server_at(url: str | None, prefix: str, store_url: str | None = None) -> Iterator[str]:
    """`url` as it is, or a server of our own on the default model (stored completions in a
    temporary SQLite file unless `store_url` says otherwise), stopped at the end."""
    if url is not None:
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    config = config_with_store(folder, store_url or f"sqlite:///{folder / 'completions.sqlite3'}")
    with serving(config, folder / "server.log") as (base, _):
        yield base


def report(results: dict[str, object], args: argparse.Namespace, name: str) -> None:
    """Prints the results and writes them, with the arguments, to `args.out`/NAME-TIME.json."""
    for key, value in results.items():
        print(f"{key}: {value}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"results": results, "args": vars(args)}, indent=2))
    print(f"written: {path}")
