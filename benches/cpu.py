#!/usr/bin/env python3
"""CPU time per proxied request, next to nginx with a 10% mirror, in one run.

    python3 benches/cpu.py                          # this checkout's release binary
    python3 benches/cpu.py --secs 5 --rounds 3 OLD_BINARY NEW_BINARY

Requests/s swing by 10-20% from minute to minute on a shared 2-core machine; CPU time per
request moves less, and explains throughput: in peers.py's closed loop the load generator, the
mock and the proxy share the two cores, so every microsecond the proxy spends per request is a
microsecond the others cannot use. This script uses peers.py's own setup (the static nginx mock,
nginx with the 10% mirror, oha, the same request and the same Understudy route: shadow, share
0.1), drives each target with oha's closed loop (32 connections) in interleaved rounds, and reads
the CPU time (user + system, /proc/PID/stat) that each Understudy process and the nginx worker
(which serves both the mirror proxy and the mock) spent per request. Binaries given on the
command line are compared with each other in the same rounds (A/B of two builds).

Needs ../shared/bench/peers.py beside the checkout (and installs oha and nginx as it does).
Only talks to 127.0.0.1.
"""
import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "bench"))
import peers  # noqa: E402

CONFIG = """
[server]
listen = "127.0.0.1:{listen}"
{workers}
[admin]
listen = "127.0.0.1:{admin}"
[store]
path = "{tmp}/{tag}.db"
[upstreams.mock]
base_url = "http://127.0.0.1:{up}"
default = true
[routes.bench]
model = "bench"
phase = "shadow"
share = 0.1
[routes.bench.stable]
upstream = "mock"
model = "mock-stable"
[routes.bench.candidate]
upstream = "mock"
model = "mock-candidate"
"""


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_understudy(tmp, tag, binary, up, workers):
    listen, admin = peers.port(), peers.port()
    path = os.path.join(tmp, f"{tag}.toml")
    with open(path, "w") as f:
        f.write(CONFIG.format(listen=listen, admin=admin, tmp=tmp, tag=tag, up=up,
                              workers=f"workers = {workers}" if workers else ""))
    env = dict(os.environ, UNDERSTUDY_ADMIN_TOKEN=secrets.token_hex(8), RUST_LOG="error")
    proc = subprocess.Popen([binary, "serve", "--config", path], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peers.PROCS.append(proc)
    if not peers.wait(listen):
        raise SystemExit(f"{binary} did not start")
    return proc.pid, f"http://127.0.0.1:{listen}/v1/chat/completions"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="*", help="understudy binaries (default: this checkout's release build)")
    ap.add_argument("--secs", type=int, default=5, help="seconds per oha run (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--workers", type=int, help="server.workers (default: one per core)")
    a = ap.parse_args()
    binaries = a.binaries
    if not binaries:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        binaries = [os.path.join(target, "release", "understudy")]
    peers.ensure_tools()
    tmp = tempfile.mkdtemp(prefix="understudy-cpu-")
    for sub in ("cb", "pt", "ft", "ut", "st"):
        os.makedirs(os.path.join(tmp, sub))
    up, mirror, plain = peers.port(), peers.port(), peers.port()
    peers.start_nginx(tmp, up, mirror, plain)
    time.sleep(0.3)
    master = peers.PROCS[0].pid
    nginx_worker = int(subprocess.run(["pgrep", "-P", str(master)], capture_output=True,
                                      text=True).stdout.split()[0])
    targets = {"nginx-mirror": (nginx_worker, f"http://127.0.0.1:{mirror}/v1/chat/completions")}
    for i, binary in enumerate(binaries):
        tag = "understudy" if len(binaries) == 1 else f"understudy-{'ABCDEFGH'[i]}"
        targets[tag] = start_understudy(tmp, tag, binary, up, a.workers)
    for _, url in targets.values():
        peers.oha(url, 2, conns=8)  # warm-up
    results = {tag: [] for tag in targets}
    for rnd in range(a.rounds):
        for tag, (pid, url) in targets.items():
            before = cpu_seconds(pid)
            run = peers.oha(url, a.secs, conns=32)
            spent = cpu_seconds(pid) - before
            served = run["rps"] * a.secs
            results[tag].append((run["rps"], 1e6 * spent / served if served else 0.0, run["bad"]))
            print(f"round {rnd + 1}  {tag:<14} {run['rps']:8.0f} req/s  {results[tag][-1][1]:6.1f} us CPU/req"
                  f"  errors {run['bad']}", flush=True)
    print()
    for i, binary in enumerate(binaries):
        tag = "understudy" if len(binaries) == 1 else f"understudy-{'ABCDEFGH'[i]}"
        print(f"{tag} = {binary}")
    print(f"\n{'target':<14} {'median req/s':>12} {'median us CPU/req':>18} {'x nginx-mirror (per round)':>30}")
    base = results["nginx-mirror"]
    for tag, rows in results.items():
        rps = sorted(r[0] for r in rows)
        us = sorted(r[1] for r in rows)
        ratios = ", ".join(f"{r[0] / b[0]:.2f}" for r, b in zip(rows, base))
        note = "(nginx worker: proxy and mock)" if tag == "nginx-mirror" else ratios
        print(f"{tag:<14} {rps[len(rps) // 2]:12.0f} {us[len(us) // 2]:18.1f} {note:>30}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        for p in peers.PROCS:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
