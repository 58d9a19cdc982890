"""`dd bs=1M` of the whole LUN through the iscsifs mount and through qemu-storage-daemon's FUSE
export of the same tmpfs tgtd LUN, interleaved, in one run (the figure of issue "LUNs as
files"). Uses bench.py's test bed, so it starts and stops exactly what bench.py would.

    scripts/bench-dd [--rounds N] [--lun-size 256M] [--mount max_read=0 ...]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench
from bench import testbed

MiB = 1 << 20


def dd(argv: list[str]) -> float:
    """Run dd; its own MB/s (10^6 bytes/s), converted to MiB/s."""
    out = subprocess.run(["dd", *argv, "bs=1M", "status=progress"], capture_output=True,
                         text=True, check=True, timeout=600).stderr
    m = re.findall(r"(\d+) bytes .* copied, ([\d.]+) s", out)
    if not m:
        raise bench.BenchError(f"dd said: {out.strip()[-200:]}")
    nbytes, secs = m[-1]
    return int(nbytes) / float(secs) / MiB


def main() -> int:
    p = argparse.ArgumentParser(prog="bench-dd", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lun-size", default="256M")
    p.add_argument("--mount", metavar="KEY=N", action="append", default=[],
                   type=bench.mount_option, help="an integer [mount] setting, e.g. max_read=0")
    args = p.parse_args()
    size = testbed.parse_size(args.lun_size)
    count = size // MiB
    tmp = Path(tempfile.mkdtemp(prefix="iscsifs-bench-dd-"))
    bed = bench.Bed(tmp=tmp, lun_size=size, mount_options=dict(args.mount))
    rss = bench.RssSampler(lambda: {})
    src = tmp / "pattern"
    results: dict[tuple[str, str], list[float]] = {}
    try:
        bed.start_tgtd()
        bed.mount_iscsifs()
        bed.start_qsd()
        subprocess.run(["head", "-c", str(count * MiB), "/dev/urandom"], check=True,
                       stdout=src.open("wb"))
        files = {"iscsifs": bed.ifs_lun, "qsd": bed.qsd_file}
        for r in range(args.rounds):
            for name, path in (files.items() if r % 2 == 0 else reversed(files.items())):
                w = dd([f"if={src}", f"of={path}", f"count={count}", "oflag=direct",
                        "conv=notrunc,fsync"])
                rd = dd([f"if={path}", "of=/dev/null", f"count={count}", "iflag=direct"])
                results.setdefault((name, "write"), []).append(w)
                results.setdefault((name, "read"), []).append(rd)
                bench._log(f"round {r}: {name} write {w:.0f} MiB/s, read {rd:.0f} MiB/s")
        # the LUN holds what the last writer wrote, whichever way it went
        same = subprocess.run(["cmp", "-n", str(count * MiB), str(src), bed.backing],
                              capture_output=True).returncode == 0
    finally:
        bench._finish_cleanup(bed, rss, tmp, None)
    print(f"\ndd bs=1M, {count} MiB, O_DIRECT, median of {args.rounds} rounds (MiB/s)")
    print(f"{'':10} {'iscsifs':>9} {'qsd':>9} {'ratio':>7}")
    for op in ("read", "write"):
        a = statistics.median(results[("iscsifs", op)])
        b = statistics.median(results[("qsd", op)])
        print(f"{op:10} {a:9.0f} {b:9.0f} {a / b:6.2f}x")
    print(f"backing file equals the data written: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
