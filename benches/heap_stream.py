#!/usr/bin/env python3
"""Heap per stream in flight, by allocation site (heaptrack), beside load.py's RSS figure.

    python3 benches/heap_stream.py                      # builds this checkout's release binary
    python3 benches/heap_stream.py --binary PATH --hold 1000 --top 12

Builds this checkout's release binary (or takes --binary), starts the simulated upstream and
`understudy serve` under heaptrack with load.py's configuration, warms up with 4,000 streams,
then holds --hold streaming requests in flight (the upstream delays its head by 3 s, as in
load.py's memory phase), stops the server and prints the heap at its peak divided by --hold,
split by the call site that allocated it (the innermost frames outside the allocator).

Needs heaptrack (`heaptrack` and `heaptrack_print`); only talks to 127.0.0.1.
"""
import argparse
import asyncio
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

# Frames that say nothing about who allocated: the allocator, containers growing, the runtime.
PLUMBING = re.compile(
    r"alloc|grow|reserve|with_capacity|__rdl|__rust|RawVec|from_iter|collect|call_once|block_on|"
    r"enter|scoped|with_current|set_scheduler|Context::run|run_task|task::raw|harness|core.rs|"
    r"poll_future|catch_unwind|panicking|coop|budget|thread_start|start_thread|clone.S|lifecycle|"
    r"backtrace|main|lang_start|_RNv")


def sites(folded, held, top, depth):
    rows = []
    with open(folded) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            rows.append((stack.split(";"), int(n)))
    total = sum(n for _, n in rows)
    by_site = collections.Counter()
    for frames, n in rows:
        named = [re.sub(r"<[^<>]*>", "", fr) for fr in frames]
        named = [fr for fr in named if not PLUMBING.search(fr)]
        by_site[" < ".join(reversed(named[-depth:]))] += n
    print(f"heap at its peak: {total / held / 1024:.1f} KiB per stream held ({held} held)")
    for site, n in by_site.most_common(top):
        print(f"  {n / held / 1024:6.1f} KiB  {site[:160]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", help="an already built understudy binary (default: build this checkout's)")
    ap.add_argument("--hold", type=int, default=1000, help="streams held in flight (default 1000)")
    ap.add_argument("--top", type=int, default=12, help="allocation sites listed (default 12)")
    ap.add_argument("--depth", type=int, default=6, help="frames naming a site (default 6)")
    a = ap.parse_args()
    exe = load.build(a.binary)
    tmp = tempfile.mkdtemp(prefix="understudy-heap-")
    out = os.path.join(tmp, "heap")
    procs = load.Procs()
    start = procs.start

    def under_heaptrack(cmd, **kw):
        if cmd[1] == "serve":
            cmd = ["heaptrack", "-o", out] + cmd
        return start(cmd, **kw)

    procs.start = under_heaptrack
    try:
        _mock, proxy, _admin, _pid, _token = load.start_servers(exe, tmp, procs)
        pid = int(subprocess.run(["pgrep", "-f", f"^{exe} serve"], capture_output=True, text=True,
                                 check=True).stdout.split()[0])
        asyncio.run(load.run(proxy, load.request_bytes("bench"), 4000, 16))
        _peak, ok, _secs = asyncio.run(load.hold(proxy, pid, a.hold, 3000))
        if ok != a.hold:
            raise SystemExit(f"{a.hold - ok} held requests failed")
        subprocess.run(["pkill", "-TERM", "-f", f"^{exe} serve"])
        procs.procs[1].wait(120)
    finally:
        procs.stop()
    folded = os.path.join(tmp, "peak.folded")
    subprocess.run(["heaptrack_print", "-f", out + ".zst", "--flamegraph-cost-type", "peak", "-F", folded],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    sites(folded, a.hold, a.top, a.depth)


if __name__ == "__main__":
    sys.exit(main())
