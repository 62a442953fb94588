#!/usr/bin/env python3
"""Soak: a steady paced load through Understudy for minutes, with faults on both releases.

    python3 benches/soak.py                      # 10 minutes at 1,000 requests/s
    python3 benches/soak.py --minutes 1 --rate 300

Two simulated upstreams (`understudy mock-upstream`): stable's answers a 500 on --stable-faults
of requests (default 1 %), the candidate's connection resets mid-stream on --candidate-faults of
requests (default 20 %). The route is in shadow with --share (default 0.2) mirrored to the
candidate, so the candidate's faults only ever reach the mirrors: the client must see none of
them. Requests are streamed chat completions sent open loop at --rate over keep-alive
connections (Python standard library only; 127.0.0.1 only).

Each minute it prints: requests sent, answered 200, stable's 500s passed through, other client
errors (what a mirrored-side fault would cause: must stay 0), p50/p99 of the total time, the
proxy's resident memory (VmRSS), and the mirrors by outcome. At the end: RSS at start and end,
and the verdict. Exit 0 when no client error other than stable's own 500s was seen and RSS at
the end is within --rss-slack-mib (default 64) of the first minute's.
"""
import argparse
import asyncio
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the load benchmark's build, process and client helpers)


def start(exe, tmp, procs, share, stable_faults, candidate_faults):
    def mock(name, args):
        log = os.path.join(tmp, f"{name}.log")
        p = procs.start([exe, "mock-upstream", "--listen", "127.0.0.1:0", *args],
                        stdout=open(log, "w"), stderr=load.subprocess.STDOUT,
                        env=dict(os.environ, RUST_LOG="warn"))
        return load.wait_for(r"listening on (\S+)", log, p).group(1)

    stable = mock("stable", ["--fault", "500", "--fault-rate", str(stable_faults)])
    candidate = mock("candidate", ["--fault", "reset", "--fault-rate", str(candidate_faults)])
    config = os.path.join(tmp, "understudy.toml")
    with open(config, "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:0"
upstream_timeout_secs = 10
[admin]
listen = "127.0.0.1:0"
[store]
path = "{tmp}/understudy.db"
[upstreams.stable]
base_url = "http://{stable}"
default = true
[upstreams.candidate]
base_url = "http://{candidate}"
[routes.soak]
model = "soak"
phase = "shadow"
share = {share}
[routes.soak.stable]
upstream = "stable"
model = "mock-stable"
system_prompt = "You are a concise support assistant."
[routes.soak.candidate]
upstream = "candidate"
model = "mock-candidate"
[routes.soak.shadow]
max_inflight = 1024
max_rps = 100000
timeout_secs = 5
[routes.soak.rollback]
auto = false
""")
    token = load.secrets.token_hex(16)
    log = os.path.join(tmp, "understudy.log")
    env = dict(os.environ, UNDERSTUDY_ADMIN_TOKEN=token, RUST_LOG="warn,understudy::server=info")
    proxy = procs.start([exe, "serve", "--config", config], stdout=load.subprocess.DEVNULL,
                        stderr=open(log, "w"), env=env)
    m = load.wait_for(r"proxy=(\S+) admin=(\S+)", log, proxy)
    return m.group(1), m.group(2), proxy.pid, token


class Minute:
    def __init__(self):
        self.sent = self.ok = self.stable_500 = self.other = 0
        self.total = []


async def soak(addr, rate, seconds, conns, report):
    payload = load.request_bytes("soak")
    pool = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(load.Conn(addr))
    minutes = []
    start = time.perf_counter()
    pending = set()

    async def one(m):
        c = await pool.get()
        try:
            status, _, total, _ = await c.request(payload)
            if status == 200:
                m.ok += 1
                m.total.append(total)
            elif status == 500:
                m.stable_500 += 1
            else:
                m.other += 1
        except (OSError, ConnectionError, ValueError, IndexError):
            m.other += 1
            c.close()
            c = load.Conn(addr)
        finally:
            pool.put_nowait(c)

    n = 0
    while True:
        now = time.perf_counter() - start
        if now >= seconds:
            break
        minute = int(now // 60)
        while len(minutes) <= minute:
            if minutes:
                report(len(minutes), minutes[-1])
            minutes.append(Minute())
        due = n / rate
        if due > now:
            await asyncio.sleep(due - now)
        m = minutes[minute]
        m.sent += 1
        n += 1
        task = asyncio.ensure_future(one(m))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    report(len(minutes), minutes[-1])
    return minutes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--share", type=float, default=0.2)
    ap.add_argument("--stable-faults", type=float, default=0.01)
    ap.add_argument("--candidate-faults", type=float, default=0.2)
    ap.add_argument("--conns", type=int, default=256)
    ap.add_argument("--rss-slack-mib", type=float, default=64)
    ap.add_argument("--binary", help="an already built understudy binary")
    a = ap.parse_args()
    random.seed(1)
    exe = load.build(a.binary)
    procs = load.Procs()
    with tempfile.TemporaryDirectory(prefix="understudy-soak-") as tmp:
        try:
            addr, admin, pid, token = start(exe, tmp, procs, a.share, a.stable_faults, a.candidate_faults)
            rss = []
            print(f"soak: {a.minutes} min at {a.rate:.0f} req/s, share {a.share}, stable 500s "
                  f"{a.stable_faults:.1%}, candidate resets {a.candidate_faults:.1%}")
            print("min    sent      200  stable500  other  p50 ms  p99 ms  RSS MiB  mirrors")

            def report(i, m):
                r = load.rss(pid)[0]
                rss.append(r)
                mirrors = load.metric_sum(admin, token, "understudy_shadow_requests_total", 'route="soak"')
                mirrors = " ".join(f"{k}={v:.0f}" for k, v in sorted(mirrors.items()))
                print(f"{i:>3} {m.sent:>8} {m.ok:>8} {m.stable_500:>10} {m.other:>6} "
                      f"{load.pct(m.total, 50):>7.2f} {load.pct(m.total, 99):>7.2f} "
                      f"{r:>8.1f}  {mirrors}", flush=True)

            minutes = asyncio.run(soak(addr, a.rate, a.minutes * 60, a.conns, report))
        finally:
            procs.stop()
    other = sum(m.other for m in minutes)
    sent = sum(m.sent for m in minutes)
    stable = sum(m.stable_500 for m in minutes)
    grew = rss[-1] - rss[0] if rss else 0.0
    print(f"\n{sent} requests; stable's own 500s passed through: {stable} ({stable / max(sent, 1):.2%}); "
          f"other client errors: {other}; RSS {rss[0]:.1f} -> {rss[-1]:.1f} MiB ({grew:+.1f})")
    ok = other == 0 and grew <= a.rss_slack_mib
    print("verdict:", "ok" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
