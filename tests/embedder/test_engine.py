"""The worker's engine on its own: it runs without the web stack that serves it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_engine_imports_no_web_stack():
    """The engine must be usable in process (the API's embedded default) without the worker app."""
    code = (
        "import json, sys\n"
        "import service.embedder.engine\n"
        "print(json.dumps([m for m in ('fastapi', 'starlette', 'uvicorn') if m in sys.modules]))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []
