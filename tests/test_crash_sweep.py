"""tools/bench/crash_sweep.py (smoke): killed mid-block, while a block file is written and while the
report is written, each resumed city equals the uninterrupted one bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_crash_sweep_smoke(tmp_path):
    out = tmp_path / "sweep.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench" / "crash_sweep.py"), "--smoke", "--work", str(tmp_path / "w"),
                           "--out", str(out)], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    result = json.loads(out.read_text()) if out.exists() else None
    assert proc.returncode == 0 and result, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(result["rows"]) == 3
    for row in result["rows"]:
        assert row["killed_exit"] == -9, row  # it died where it was told to, not at the end
        assert row["resumed_equal"] and row["report_equal"], row
