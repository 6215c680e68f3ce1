"""Synthetic archive generator throughput: plan (hash pass) and write, beside baselines.

Run: ``.venv/bin/python -m bench.bench_synth [--repeat N] [--gib G] [--out PATH]``.
Baselines measured in the same run: ``sha256`` of the same number of bytes from one
1 MiB buffer (the ceiling of the planning pass) and writing that buffer repeatedly to
the same destination (the ceiling of the write pass). Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time

from castar.engine import synth

BLOCK = 1 << 20


def _time(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--out", default="/dev/null")
    args = ap.parse_args()
    total = int(args.gib * (1 << 30))
    layers = 4
    per_layer = total // (2 * layers)
    buf = os.urandom(BLOCK)

    def sha_baseline() -> None:
        h = hashlib.sha256()
        for _ in range(total // BLOCK):
            h.update(buf)

    def write_baseline() -> None:
        with open(args.out, "wb") as f:
            for _ in range(total // BLOCK):
                f.write(buf)

    sha_t = _time(sha_baseline, args.repeat)
    wr_t = _time(write_baseline, args.repeat)
    print(f"baseline sha256     {total / sha_t / 1e6:8.0f} MB/s")
    print(f"baseline write      {total / wr_t / 1e6:8.0f} MB/s  ({args.out})")
    for compression in ("none", "gzip", "zstd"):
        spec = synth.SynthSpec(layers=layers, layer_size=per_layer, compression=compression)
        image = synth.plan(spec)
        plan_t = _time(lambda spec=spec: synth.plan(spec), args.repeat)
        write_t = _time(lambda image=image: synth.write_path(image, args.out), args.repeat)
        print(
            f"{compression:5} plan  {image.size / plan_t / 1e6:8.0f} MB/s "
            f"({plan_t / sha_t:.2f}x sha256 time)  "
            f"write {image.size / write_t / 1e6:8.0f} MB/s ({write_t / wr_t:.2f}x write time)  "
            f"size {image.size / 1e9:.2f} GB"
        )


if __name__ == "__main__":
    main()
