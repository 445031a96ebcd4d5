"""Memory of an engine process that receives a small Parquet file expanding to 2 million rows.

Baseline, measured in the same run: the same engine with the row and uncompressed-size limits raised out
of the way (what the engine did before it checked them). Reported: the file size, the answer, and the
process's peak resident memory (VmHWM) before and after the upload, for both.

    .venv/bin/python bench/upload_memory.py --json bench/results/upload_memory.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import httpx
import pandas as pd

from backtest_devtools.stack import Stack, free_port

KEY = "bench-key"


def bomb(rows: int) -> bytes:
    """OHLCV columns of repeated values: Parquet's encodings shrink them to almost nothing."""
    frame = pd.DataFrame({"time": pd.Series(pd.Timestamp("2000-01-01"), index=range(rows)), "open": 1.0,
                          "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0})  # fmt: skip
    out = io.BytesIO()
    frame.to_parquet(out, index=False, compression="zstd")
    return out.getvalue()


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def measure(label: str, content: bytes, env: dict[str, str], workdir: Path) -> dict:
    stack = Stack(workdir / label)
    port = free_port()
    try:
        managed = stack.engine(label, port, {"ENGINE_API_KEYS": KEY, "DATABASE_URL": f"sqlite:///{workdir}/{label}.db",
                                             **env})  # fmt: skip
        pid = managed.pid()
        assert pid is not None
        before = peak_mib(pid)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/datasets", headers={"X-API-Key": KEY},
            files={"file": ("bars.parquet", content, "application/octet-stream")}, data={"symbol": "BOMB"},
            timeout=300,
        )  # fmt: skip
        after = peak_mib(pid)
    finally:
        stack.close()
    return {
        "setup": label, "status": answer.status_code, "detail": answer.json().get("detail", "")[:160],
        "peak_rss_before_mib": round(before, 1), "peak_rss_after_mib": round(after, 1),
        "growth_mib": round(after - before, 1),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    content = bomb(args.rows)
    workdir = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    limited = measure("default-limits", content, {}, workdir)
    raised = {"ENGINE_MAX_UPLOAD_ROWS": str(10**9), "ENGINE_MAX_UPLOAD_UNCOMPRESSED_BYTES": str(2**40)}
    unlimited = measure("limits-raised", content, raised, workdir)
    report = {
        "benchmark": f"one Parquet upload of {len(content)} bytes expanding to {args.rows} rows",
        "with_limits": limited,
        "baseline_without_limits": unlimited,
        "command": "python bench/upload_memory.py --json bench/results/upload_memory.json",
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
