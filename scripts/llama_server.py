"""llama.cpp's `llama-server`, built once from the source vendored in the `llama-cpp-python` sdist.

    .venv/bin/python scripts/llama_server.py            # build (about 10 minutes on 2 cores), print the path
    .venv/bin/python scripts/llama_server.py --version 0.3.36

The benchmark's `llama` yardstick runs this binary on the same GGUF file as our default model. The
build is cached under ~/.cache/openweights-server/llama.cpp/<sdist version>/ and reused; it needs
pip (to download the sdist), cmake and a C++ compiler. A CPU-only build (no CUDA, no curl), tuned
for this machine's CPU (GGML_NATIVE), as a user building llama.cpp for their own box would.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "openweights-server" / "llama.cpp"


def _download_sdist(version: str | None, into: Path) -> Path:
    spec = f"llama-cpp-python=={version}" if version else "llama-cpp-python"
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-binary",
        ":all:",
        "--no-deps",
        spec,
        "-d",
        str(into),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    (archive,) = into.glob("llama_cpp_python-*.tar.gz")
    return archive


def _version_of(archive: Path) -> str:
    return archive.name.removeprefix("llama_cpp_python-").removesuffix(".tar.gz")


def _cached(version: str | None) -> Path | None:
    if version:
        binary = CACHE / version / "llama-server"
        return binary if binary.exists() else None
    found = sorted(CACHE.glob("*/llama-server"))
    return found[-1] if found else None


def build(version: str | None = None, jobs: int | None = None) -> Path:
    """The path of a built llama-server, building it first when the cache has none."""
    binary = _cached(version)
    if binary is not None:
        return binary
    with tempfile.TemporaryDirectory(prefix="llama-build-") as work:
        workdir = Path(work)
        archive = _download_sdist(version, workdir)
        version = _version_of(archive)
        with tarfile.open(archive) as tar:
            tar.extractall(workdir, filter="data")
        source = workdir / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
        build_dir = workdir / "build"
        options = [
            "-DCMAKE_BUILD_TYPE=Release",
            "-DGGML_NATIVE=ON",
            "-DGGML_CUDA=OFF",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DBUILD_SHARED_LIBS=OFF",
        ]
        subprocess.run(["cmake", "-S", str(source), "-B", str(build_dir), *options], check=True)
        parallel = str(jobs or os.cpu_count() or 2)
        command = ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", parallel]
        subprocess.run(command, check=True)
        target = CACHE / version
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_dir / "bin" / "llama-server", target / "llama-server")
    return target / "llama-server"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", help="llama-cpp-python sdist version (default: the newest on the index)")
    parser.add_argument("--jobs", type=int, help="parallel compile jobs (default: every core)")
    args = parser.parse_args()
    print(build(args.version, args.jobs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
