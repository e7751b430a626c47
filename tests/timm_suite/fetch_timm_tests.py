"""Fetch timm's own ``tests/test_models.py`` for the installed timm version, unmodified, next to this file.

Usage: ``python tests/timm_suite/fetch_timm_tests.py`` (needs the package index: ``pip download`` of timm's sdist).
The adapter ``conftest.py`` in this folder then runs it against InternImage's registered models.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEMBER = "tests/test_models.py"


def main() -> int:
    import timm

    version = timm.__version__
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, "-d", tmp, f"timm=={version}"], check=True)
        sdists = sorted(Path(tmp).glob("timm-*.tar.gz"))
        if not sdists:
            sys.exit(f"fetch_timm_tests: pip downloaded no sdist of timm=={version}")
        with tarfile.open(sdists[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(f"/{MEMBER}")), None)
            if member is None:
                sys.exit(f"fetch_timm_tests: {sdists[0].name} has no {MEMBER}")
            data = tar.extractfile(member).read()
    target = HERE / "test_models.py"
    target.write_bytes(data)
    print(f"fetch_timm_tests: timm {version} {MEMBER} -> {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
