#!/usr/bin/env python3
"""Instructions and system calls per proxied stream, immune to other load on the machine.

    python3 benches/profile_stream.py                    # this checkout's release binary
    python3 benches/profile_stream.py --binary PATH --requests 400 --out DIR
    python3 benches/profile_stream.py --nginx --token-ms 20 --requests 200 --conc 20   # paced
    python3 benches/profile_stream.py --mirrored --no-strace   # every stream mirrored and scored

Starts the simulated upstream and one Understudy worker (`server.workers = 1`) under valgrind's
callgrind (instruction counts, not time: another process loading the CPU does not change them),
sends --warmup streaming requests, zeroes the counters, sends --requests more over --conc
keep-alive connections (the same request and route as benches/load.py: `model = "bench"`, a
system prompt, a parameter override, the `model` put back, usage observed), dumps the counters and
prints instructions per stream, split by where they were spent (callgrind_annotate's inclusive
counts of the functions named below). Then the same run under `strace -f -c` counts the system
calls per stream. With --nginx, nginx `proxy_pass` (one worker) is measured the same way.

Needs valgrind (and strace for the syscall counts); only talks to 127.0.0.1.
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

# (label, function names): inclusive counts of whole functions (callgrind_annotate's rows
# tagged with their binary), summed over the names. Rows overlap (observing includes SSE framing),
# so each is read on its own, against the total.
PARTS = [
    ("relay body (RelayBody::poll_frame and all it calls)", ["<understudy::proxy::relay::RelayBody as http_body::Body>::poll_frame"]),
    ("  upstream body frames (hyper Incoming::poll_frame)", ["<hyper::body::incoming::Incoming as http_body::Body>::poll_frame"]),
    ("  upstream connection driven by the body (hyper client)", [
        "<hyper::client::conn::http1::Connection<T,B> as core::future::future::Future>::poll"]),
    ("  observing (Observer::feed)", ["understudy::observe::Observer::feed"]),
    ("    SSE framing by the parser (events read in place skip it)", ["sse_parse::parser::SseParser::feed"]),
    ("    reading events (Assembly::event / event_outcome)", [
        "understudy::observe::<impl understudy::observe::assembly::Assembly>::event",
        "understudy::observe::<impl understudy::observe::assembly::Assembly>::event_outcome"]),
    ("  model rewrite (ModelRewriter::push)", ["understudy::upstream::rewrite::ModelRewriter::push"]),
    ("request phases (Proxy::handle, until the response head)", ["understudy::proxy::Proxy::handle::{{closure}}"]),
    ("  request parse + rewrite", ["understudy::upstream::rewrite::RequestBody::parse",
                                   "understudy::upstream::rewrite::rewrite_request"]),
    ("client response writes (hyper Dispatcher::poll_flush)", ["hyper::proto::h1::dispatch::Dispatcher<D,Bs,I,T>::poll_flush"]),
    ("metrics (Metrics::request_finished)", ["understudy::metrics::Metrics::request_finished"]),
    ("allocation (glibc malloc/free)", ["malloc", "free", "realloc", "calloc", "posix_memalign", "aligned_alloc"]),
    ("memcpy/memmove", ["__memcpy_avx_unaligned_erms", "__memmove_avx_unaligned_erms"]),
]


async def drive(addr, payload, warmup, requests, conc, between):
    await load.run(addr, payload, warmup, conc)
    between()
    res = await load.run(addr, payload, requests, conc)
    if res.errors or len(res.total) != requests:
        raise SystemExit(f"{res.errors} failed requests")
    return res


def annotate(out_file):
    """(total instructions, {function: inclusive instructions}) of a callgrind file."""
    # Run away from the sources: where callgrind_annotate finds them (the project root), it splits
    # a function's rows by the files its code was inlined from, and the row kept below would be
    # only the part written in the function's own file.
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", out_file],
                          capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()).stdout
    total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
    funcs = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*?) \[[^\]]+\]$", line)
        if m and ":" in m.group(2):
            name = m.group(2).split(":", 1)[1]
            funcs[name] = max(funcs.get(name, 0), int(m.group(1).replace(",", "")))
    return total, funcs


def part_counts(funcs):
    return [(label, sum(funcs.get(n, 0) for n in names)) for label, names in PARTS]


def callgrind_run(exe, tmp, args, label, payload_model, proc_start):
    procs = load.Procs()
    try:
        addr, pid = proc_start(procs)
        payload = load.request_bytes(payload_model, token_ms=args.token_ms)

        def zero():
            subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)

        asyncio.run(drive(addr, payload, args.warmup, args.requests, args.conc, zero))
        subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
    finally:
        # Read the dump once the process is gone: callgrind has written it whole.
        procs.stop()
    dump = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.startswith(f"callgrind.{label}.") and f.endswith(".1")]
    if not dump:
        raise SystemExit(f"no callgrind dump for {label}")
    if args.out:
        shutil.copy(dump[0], os.path.join(args.out, os.path.basename(dump[0])))
    return annotate(dump[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", help="understudy binary (default: build this checkout's release binary)")
    ap.add_argument("--mock-binary", help="understudy binary whose mock-upstream serves (default: --binary)")
    ap.add_argument("--requests", type=int, default=400, help="streams counted (default 400)")
    ap.add_argument("--warmup", type=int, default=100, help="streams before counting (default 100)")
    ap.add_argument("--conc", type=int, default=4, help="keep-alive connections (default 4)")
    ap.add_argument("--nginx", action="store_true", help="also count nginx proxy_pass (one worker)")
    ap.add_argument("--no-strace", action="store_true", help="skip the system call counts")
    ap.add_argument("--mirrored", action="store_true",
                    help="the route in shadow at share 1.0: every stream also mirrored and scored")
    ap.add_argument("--token-ms", type=int, help="the upstream spaces its events this many ms apart (paced streams)")
    ap.add_argument("--out", help="keep the callgrind files in this directory")
    a = ap.parse_args()
    exe = load.build(a.binary)
    tmp = tempfile.mkdtemp(prefix="understudy-prof-")
    if a.out:
        os.makedirs(a.out, exist_ok=True)
    mockp = load.Procs()
    try:
        mock_log = os.path.join(tmp, "mock.log")
        mockp.start([a.mock_binary or exe, "mock-upstream", "--listen", "127.0.0.1:0"], stdout=open(mock_log, "w"),
                    stderr=subprocess.STDOUT, env=dict(os.environ, RUST_LOG="warn"))
        mock = load.wait_for(r"listening on (\S+)", mock_log, mockp.procs[0]).group(1)

        def understudy(wrapper):
            def start(procs):
                config = os.path.join(tmp, "understudy.toml")
                with open(config, "w") as f:
                    f.write(CONFIG.format(tmp=tmp, mock=mock, phase=MIRRORED_PHASE if a.mirrored else "")
                            + (MIRRORED if a.mirrored else ""))
                log = os.path.join(tmp, "understudy.log")
                env = dict(os.environ, UNDERSTUDY_ADMIN_TOKEN="x" * 32, RUST_LOG="warn,understudy::server=info")
                p = procs.start(wrapper + [exe, "serve", "--config", config], stdout=subprocess.DEVNULL,
                                stderr=open(log, "w"), env=env)
                m = load.wait_for(r"proxy=(\S+) admin=(\S+)", log, p, secs=120)
                return m.group(1), p.pid
            return start

        results = {}
        cg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.understudy.%p"]
        results["understudy"] = callgrind_run(exe, tmp, a, "understudy", "bench", understudy(cg))
        if a.nginx:
            def nginx_start(procs):
                addr = start_nginx_valgrind(tmp, mock, procs)
                return addr, procs.procs[-1].pid
            results["nginx"] = callgrind_run(exe, tmp, a, "nginx", "mock-stable", nginx_start)

        paced = f", events {a.token_ms} ms apart" if a.token_ms else ", the upstream's events all at once"
        print(f"\ninstructions per stream ({a.requests} streams after {a.warmup} warm-up, {a.conc} connections{paced}; "
              f"callgrind, user space only)\n")
        for name, (total, rows) in results.items():
            print(f"{name}: {total / a.requests:,.0f} instructions per stream")
            if name == "understudy":
                for label, n in part_counts(rows):
                    print(f"  {label:<52} {n / a.requests:>10,.0f}  {100 * n / total:5.1f} %")
        if not a.no_strace and shutil.which("strace"):
            print("\nsystem calls per stream (strace -f -c)\n")
            for name in results:
                procs = load.Procs()
                trace = os.path.join(tmp, f"strace.{name}")
                try:
                    if name == "understudy":
                        addr, pid = understudy(["strace", "-f", "-c", "-o", trace])(procs)
                        model = "bench"
                    else:
                        addr = start_nginx_valgrind(tmp, mock, procs, ["strace", "-f", "-c", "-o", trace])
                        model = "mock-stable"
                    asyncio.run(drive(addr, load.request_bytes(model, token_ms=a.token_ms), 0, a.requests, a.conc,
                                      lambda: None))
                finally:
                    stop_traced(procs)
                with open(trace) as f:
                    text = f.read()
                calls = {}
                for line in text.splitlines():
                    m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
                    if m and m.group(2) != "total":
                        calls[m.group(2)] = int(m.group(1))
                top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
                total = sum(calls.values())
                print(f"{name}: {total / a.requests:.1f} per stream (incl. start-up): "
                      + ", ".join(f"{k} {v / a.requests:.1f}" for k, v in top))
    finally:
        mockp.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def stop_traced(procs):
    """Stops the process strace runs (so strace writes its summary), then strace."""
    for p in procs.procs:
        try:
            with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            children = []
        for c in children:
            try:
                os.kill(c, 15)
            except OSError:
                pass
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            pass
    procs.stop()


def start_nginx_valgrind(tmp, mock, procs, wrapper=None):
    port = load.free_port()
    for sub in ("cb", "pt", "ft", "ut", "st"):
        os.makedirs(f"{tmp}/{sub}", exist_ok=True)
    conf = f"{tmp}/nginx.conf"
    with open(conf, "w") as f:
        f.write(f"""
daemon off; master_process off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/cb; proxy_temp_path {tmp}/pt; fastcgi_temp_path {tmp}/ft;
  uwsgi_temp_path {tmp}/ut; scgi_temp_path {tmp}/st;
  upstream mock {{ server {mock}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port} backlog=4096; keepalive_requests 1000000;
    location / {{ proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off;
      proxy_pass http://mock; }} }}
}}""")
    wrapper = wrapper or ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.nginx.%p"]
    p = procs.start(wrapper + ["nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    end = time.time() + 60
    while time.time() < end:
        try:
            import socket
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return f"127.0.0.1:{port}"
        except OSError:
            if p.poll() is not None:
                break
            time.sleep(0.1)
    raise SystemExit("nginx did not start")


CONFIG = """
[server]
listen = "127.0.0.1:0"
workers = 1
[admin]
listen = "127.0.0.1:0"
token_env = "UNDERSTUDY_ADMIN_TOKEN"
[store]
path = "{tmp}/understudy.db"
[upstreams.mock]
base_url = "http://{mock}"
default = true
[routes.bench]
model = "bench"
{phase}
[routes.bench.stable]
upstream = "mock"
model = "mock-stable"
system_prompt = "You are a concise support assistant."
params = {{ temperature = 0.2 }}
"""

# With --mirrored: the same route in shadow, every request mirrored to a candidate and scored.
MIRRORED_PHASE = 'phase = "shadow"\nshare = 1.0'
MIRRORED = """
[routes.bench.candidate]
upstream = "mock"
model = "mock-candidate"
system_prompt = "You are a concise and friendly support assistant."
[routes.bench.shadow]
max_inflight = 1024
max_rps = 100000
[routes.bench.rollback]
auto = false
"""

if __name__ == "__main__":
    main()
