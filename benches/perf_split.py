#!/usr/bin/env python3
"""Where a proxied stream's CPU time goes, in time rather than instructions: `perf` samples.

    python3 benches/perf_split.py                  # this checkout's release binary, beside nginx
    python3 benches/perf_split.py --binary PATH --requests 8000 --no-nginx

Starts the simulated upstream, Understudy and (when nginx is on PATH) nginx `proxy_pass` as
benches/load.py does (its `bench` route: a system prompt, a parameter override, the `model` put
back, usage observed, no mirror), sends --requests streams over --conc keep-alive connections to
each while `perf record -e cpu-clock` samples the proxy's threads, and prints the CPU time per
stream (from /proc, user and kernel) and the share of the samples in each part:

  kernel                 system calls, TCP over loopback, wake-ups, scheduling
  hyper, http, httparse  both HTTP/1 legs: the server's and the client's state machines, heads
  tokio                  the scheduler, the I/O driver, timers
  serde_json             the request's parse and rewrite, the few events parsed
  memchr                 the targeted scans (SSE framing, outcome keys, `model`)
  bytes                  buffer splitting and reference counts (hyper's, mostly)
  glibc malloc           malloc, free and their internals
  libc mem*              memcpy, memmove, memcmp, memset
  understudy             the proxy's own functions (with what the compiler inlined into them)
  other                  std, libc's system call wrappers, the vDSO clock

Samples are attributed to the function that was running, so a part includes only what was not
inlined into a function of another part. Sampling itself costs kernel time in the sampled
process (an interrupt per sample), so the CPU per stream printed with it is inflated (by 3 to
10 us per stream here, Understudy's kernel time most); read CPU per stream from a run with
--no-perf, or from benches/load.py, and the parts' shares from a sampled run. The kernel's time per stream also moves with the load for both proxies
(how often a thread sleeps and is woken); user space is the steadier figure. Needs `perf` (linux-perf) and permission to sample
another process (run as root, or with kernel.perf_event_paranoid <= 1). Only talks to
127.0.0.1.
"""
import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

# (part, pattern on perf's `dso  [.|k] symbol` line); the first that matches takes the sample.
PARTS = [
    ("kernel", r"\[k\]"),
    ("hyper, http, httparse", r"hyper|httparse|\bhttp::|http_body"),
    ("tokio", r"tokio|\bmio::"),
    ("serde_json", r"serde"),
    ("memchr", r"memchr"),
    ("bytes", r"\bbytes::"),
    ("glibc malloc", r"malloc|\bfree\b|cfree|_int_|realloc|calloc|consolidate|unlink_chunk|tcache"),
    ("libc mem*", r"__mem(move|cpy|cmp|set)|\bmem(move|cpy|cmp|set)\b"),
    ("understudy", r"understudy::|<understudy::"),
    ("nginx", r"^\s*[\d.]+%\s+nginx\s"),
]


def perf_parts(data):
    """{part: percent of the samples} of a perf.data file."""
    text = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "--stdio",
                           "-g", "none"], capture_output=True, text=True, check=True).stdout
    parts = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\S", line)
        if not m:
            continue
        part = next((name for name, pattern in PARTS if re.search(pattern, line)), "other")
        parts[part] = parts.get(part, 0.0) + float(m.group(1))
    return parts


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def measure(name, addr, pids, payload, a, tmp):
    """Drives `addr` while perf samples `pids`; (CPU us per stream: user, kernel; parts)."""
    asyncio.run(load.run(addr, payload, a.warmup, a.conc))
    data = os.path.join(tmp, f"{name}.perf.data")
    perf = None
    if not a.no_perf:
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", str(a.freq), "-o", data,
                                 "-p", ",".join(map(str, pids))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # perf attaches
    # The first pid's CPU counts its child processes' (nginx's workers): the others are only
    # for perf, which samples the threads of the processes it is given.
    before = load.cpu_secs(pids[0])
    res = asyncio.run(load.run(addr, payload, a.requests, a.conc))
    after = load.cpu_secs(pids[0])
    if perf:
        perf.send_signal(subprocess.signal.SIGINT)
        perf.wait(30)
    if res.errors or len(res.total) != a.requests:
        raise SystemExit(f"{name}: {res.errors} failed requests")
    user = (after[0] - before[0]) / a.requests * 1e6
    system = (after[1] - before[1]) / a.requests * 1e6
    return user, system, ({} if a.no_perf else perf_parts(data)), res.rps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", help="understudy binary (default: build this checkout's release binary)")
    ap.add_argument("--requests", type=int, default=8000, help="streams sampled per target (default 8000)")
    ap.add_argument("--warmup", type=int, default=1000, help="streams before sampling (default 1000)")
    ap.add_argument("--conc", type=int, default=16, help="keep-alive connections (default 16)")
    ap.add_argument("--freq", type=int, default=4999, help="samples per second per CPU (default 4999)")
    ap.add_argument("--no-nginx", action="store_true", help="skip nginx proxy_pass")
    ap.add_argument("--no-perf", action="store_true", help="only the CPU per stream, without sampling (its cost)")
    a = ap.parse_args()
    if not a.no_perf and not shutil.which("perf"):
        raise SystemExit("perf is not installed (apt-get install linux-perf)")
    exe = load.build(a.binary)
    tmp = tempfile.mkdtemp(prefix="understudy-perf-")
    procs = load.Procs()
    try:
        mock, proxy, _admin, pid, _token = load.start_servers(exe, tmp, procs)
        targets = [("understudy", proxy, [pid])]
        if not a.no_nginx and shutil.which("nginx"):
            nginx = load.start_nginx(tmp, mock, procs)
            master = procs.procs[-1].pid
            targets.append(("nginx", nginx, [master] + children(master)))
        # nginx passes the model through: it asks the mock for what Understudy's route asks.
        payloads = {"understudy": load.request_bytes("bench"), "nginx": load.request_bytes("mock-stable")}
        rows = [(name, *measure(name, addr, pids, payloads[name], a, tmp)) for name, addr, pids in targets]
    finally:
        procs.stop()
    print(f"\nCPU per stream and where its samples fall ({a.requests} streams over {a.conc} connections, "
          f"the upstream's 14 events at once; perf cpu-clock at {a.freq} Hz)\n")
    print(f"{'':<24}" + "".join(f"{name:>14}" for name, *_ in rows))
    print(f"{'streams/s':<24}" + "".join(f"{r[4]:>14.0f}" for r in rows))
    print(f"{'CPU us per stream':<24}" + "".join(f"{r[1] + r[2]:>14.1f}" for r in rows))
    print(f"{'  user space':<24}" + "".join(f"{r[1]:>14.1f}" for r in rows))
    print(f"{'  kernel':<24}" + "".join(f"{r[2]:>14.1f}" for r in rows))
    names = [p for p, _ in PARTS] + ["other"]
    for part in names:
        if any(part in r[3] for r in rows):
            cells = []
            for r in rows:
                share = r[3].get(part, 0.0)
                cells.append(f"{share:>6.1f}% {share / 100 * (r[1] + r[2]):>5.1f}us")
            print(f"{part:<24}" + "".join(f"{c:>14}" for c in cells))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
