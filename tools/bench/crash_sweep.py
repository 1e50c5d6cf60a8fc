"""Crash sweep: kill `ns-train mclnf-city-tiny` in the middle of every kind of write, resume it,
and compare the resumed city with an uninterrupted one.

Each run is killed (SIGKILL, by the process itself at a named point: `MCLNF_CRASH_AT`, see
`mclnf_city/files.py`) mid-block, while a block file, the manifest, a checkpoint, the pixel
index or the report is written (file complete under its temporary name) or just after, for one
process and for two. It is then resumed with `--load-dir <run>/nerfstudio_models`. Every process
runs one thread, so an uninterrupted run and a resumed one add in the same order: the resumed
city must hold the same block files bit for bit, and its report must show every block's renders
bit-identical at the end to those at its finish.

    python tools/bench/crash_sweep.py                 # the demo city, 1 and 2 processes
    python tools/bench/crash_sweep.py --smoke         # a tiny city, three points (the tests run this)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, parse_args, smoke_city, write_json  # noqa: E402

from mclnf_city.files import CRASH_AT  # noqa: E402
from mclnf_city.store import CityStore  # noqa: E402


def kill_points(steps_per_block: int, smoke: bool, blocks: int, processes: int) -> List[str]:
    """Where to die: `event:name-glob@n` (the n-th time the point is reached in a process). Each
    process counts its own steps: its share of the blocks times the steps per block."""
    steps = -(-blocks // processes) * steps_per_block
    points = [
        f"step:{steps_per_block + steps_per_block // 2}",  # mid-block (the second block)
        "rename:block_*.pt@2",  # the second block file written, not yet in place
        "renamed:block_*.pt@2",  # in place, the manifest does not name it yet
        "rename:manifest.json@6",  # a manifest update
        "renamed:manifest.json@8",  # right after one, before the checkpoint
        "rename:step-*.ckpt@2",  # a checkpoint
        "rename:index.json",  # the pixel index, staged before it is published
        "rename:test_0001.png",  # the report's renders
        "rename:metrics.json",  # the report's metrics, its last write
        f"step:{steps - 2}",  # near the end of the stream
    ]
    return [points[0], points[1], points[8]] if smoke else points


def ns_train(data: Path, out: Path, timestamp: str, args, env: Dict[str, str], extra: List[str]) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "ns-train"), "mclnf-city-tiny", "--data", str(data), "--output-dir", str(out),
               "--timestamp", timestamp, "--vis", "tensorboard", "--machine.device-type", "cpu", "--experiment-name", "sweep",
               "--pipeline.steps-per-block", str(args.steps_per_block), "--steps-per-save", str(args.steps_per_save),
               "--pipeline.datamanager.train-num-rays-per-batch", str(args.rays), *extra]
    with open(out / f"{timestamp}.log", "a") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=3600)


def city_state(run_dir: Path) -> Dict:
    """Block files' checksums (recomputed from the files) and the report's bit-identity per block."""
    store = CityStore(run_dir / "city")
    store.verify()
    report = json.loads((run_dir / "city" / "report" / "metrics.json").read_text())
    return {
        "blocks": {b: store.block(b)["sha256"] for b in sorted(store.done_blocks())},
        "solo_at_end": {b: v["at_end"].get("solo_render_sha256") for b, v in report["blocks"].items()},
        "bit_identical": all(v["renders_alone_bit_identical"] is not False for v in report["blocks"].values()),
    }


def sweep(data: Path, work: Path, processes: int, args) -> List[Dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop(CRASH_AT, None)
    devices = ["--machine.num-devices", str(processes)] if processes > 1 else ["--pipeline.blocks-per-wave", "2"]
    ref_out = work / f"p{processes}_reference"
    ref_out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    done = ns_train(data, ref_out, "run", args, env, devices)
    assert done.returncode == 0, f"the uninterrupted run failed: {ref_out / 'run.log'}"
    reference = city_state(ref_out / "sweep" / "mclnf-city-tiny" / "run")
    print(f"[crash_sweep] {processes} process(es): uninterrupted run {time.time() - start:.0f} s, {len(reference['blocks'])} blocks")
    rows = []
    for k, point in enumerate(kill_points(args.steps_per_block, args.smoke, len(reference["blocks"]), processes)):
        out = work / f"p{processes}_kill{k}"
        out.mkdir(parents=True, exist_ok=True)
        killed = ns_train(data, out, "killed", args, {**env, CRASH_AT: point}, devices)
        run_dir = out / "sweep" / "mclnf-city-tiny" / "killed"
        row: Dict = {"processes": processes, "kill_point": point, "killed_exit": killed.returncode}
        if killed.returncode == 0:
            row.update(resumed_equal=None, report_equal=None, note="the point was never reached: the run finished")
        else:
            resumed = ns_train(data, out, "resumed", args, env, [*devices, "--load-dir", str(run_dir / "nerfstudio_models")])
            row["resumed_exit"] = resumed.returncode
            if resumed.returncode != 0:
                row.update(resumed_equal=False, report_equal=False, note=f"resume failed: {out / 'resumed.log'}")
            else:
                state = city_state(run_dir)
                row["resumed_equal"] = state["blocks"] == reference["blocks"]
                row["report_equal"] = state["bit_identical"] and state["solo_at_end"] == reference["solo_at_end"]
        rows.append(row)
        print(f"[crash_sweep] {processes} p, {point:<26} killed (exit {killed.returncode}) -> resumed city equal: "
              f"{row['resumed_equal']}, report equal: {row['report_equal']}")
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "assets" / "demo_city", help="capture to train (default: the demo city)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mclnf_crash_sweep"), help="folder for the runs (emptied first)")
    parser.add_argument("--out", type=Path, default=RESULTS / "crash_sweep.json")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps-per-block", type=int, default=40)
    parser.add_argument("--steps-per-save", type=int, default=15)
    parser.add_argument("--rays", type=int, default=512)
    parser.add_argument("--smoke", action="store_true", help="a tiny city, 3 kill points, one process (the test suite runs this)")
    args = parse_args(parser, argv, steps_per_block=8, steps_per_save=5, rays=128, processes=[1])
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    data = smoke_city(args.work / "capture", seed=0) if args.smoke else args.data
    rows = [row for p in args.processes for row in sweep(data, args.work, p, args)]
    ok = all(r["resumed_equal"] and r["report_equal"] for r in rows)
    write_json(args.out, {"smoke": args.smoke, "command": " ".join(sys.argv), "data": str(data), "rows": rows, "all_equal": ok})
    print(f"[crash_sweep] {'every resumed city equals the uninterrupted one' if ok else 'SOME RESUMED CITIES DIFFER'}; wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
