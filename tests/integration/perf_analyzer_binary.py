"""Triton's perf_analyzer for the tests: the binary inside the ``tritonclient`` 2.46.0 wheel.

Newer ``perf-analyzer`` wheels need glibc 2.38; the 2.46.0 tritonclient wheel's binary runs on glibc
2.36 (these machines). It is not installed as a package (tritonclient 2.46.0 would pin an older
tritonclient than the one the tests use): the wheel is downloaded once with pip into a cache folder and
the binary extracted. It links ``libb64.so.0d`` (Debian libb64-0d, in scripts/system_packages.sh) and
``libcudart.so.12`` (the nvidia-cuda-runtime-cu12 package of the test extra; no GPU is needed for
system shared memory). ``MEDSERVE_PERF_ANALYZER`` names a binary to use instead.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

VERSION = "2.46.0"
CACHE = Path(os.environ.get("MEDSERVE_TEST_CACHE", Path.home() / ".cache" / "medserve-tests"))
_MEMBER = f"tritonclient-{VERSION}.data/data/bin/perf_analyzer"


def cuda_runtime_dir() -> Path | None:
    """The folder of libcudart.so.12 from the nvidia-cuda-runtime-cu12 package, if installed."""
    try:
        import nvidia.cuda_runtime  # noqa: PLC0415 - optional test dependency
    except ImportError:
        return None
    folder = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
    return folder if (folder / "libcudart.so.12").exists() else None


def perf_analyzer() -> tuple[Path | None, str]:
    """The binary, or None and why it cannot be had."""
    given = os.environ.get("MEDSERVE_PERF_ANALYZER")
    if given:
        return Path(given), ""
    target = CACHE / f"perf_analyzer-{VERSION}" / "perf_analyzer"
    if not target.exists():
        download = CACHE / "wheels"
        download.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "--platform",
                "manylinux1_x86_64",
                "-d",
                str(download),
                f"tritonclient=={VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        wheels = sorted(download.glob(f"tritonclient-{VERSION}-*.whl"))
        if not wheels:
            return None, f"tritonclient {VERSION} wheel could not be downloaded: {result.stderr[-300:]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            target.write_bytes(wheel.read(_MEMBER))
        target.chmod(target.stat().st_mode | stat.S_IXUSR)
    return target, ""


def environment() -> dict[str, str]:
    """The environment perf_analyzer runs in (libcudart on the library path)."""
    env = dict(os.environ)
    cuda = cuda_runtime_dir()
    if cuda is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(cuda), env.get("LD_LIBRARY_PATH", "")]))
    return env
