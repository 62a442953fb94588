"""Runs the real `understudy` binary and its simulated upstream for the SDK client suite.

The binary comes from UNDERSTUDY_BIN (set by tests/sdk_clients.rs) or target/debug/understudy.
Both processes listen on port 0 and report their addresses on their output.
"""
import os
import re
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("UNDERSTUDY_BIN") or os.path.join(ROOT, "target", "debug", "understudy")
TOKEN = "sdk-suite-token"
UPSTREAM_KEY = "sk-upstream-from-env"

CONFIG = """
[server]
listen = "127.0.0.1:0"
upstream_timeout_secs = 5

[admin]
listen = "127.0.0.1:0"

[store]
path = "{dir}/understudy.db"

[upstreams.sim]
base_url = "{sim}"
default = true
api_key_env = "SIM_KEY"

[upstreams.claude]
base_url = "{sim}"
api = "anthropic"
api_key_env = "SIM_KEY"

[routes.support-bot]
model = "support-bot"
phase = "shadow"
share = 1.0

[routes.support-bot.stable]
upstream = "sim"
model = "sim-gpt-2024-08-06"
system_prompt = "You are a concise support assistant."

[routes.support-bot.candidate]
upstream = "sim"
model = "sim-gpt-2024-11-20"
system_prompt = "You are a concise support assistant."

[routes.claude-bot]
model = "claude-bot"
phase = "shadow"
share = 1.0

[routes.claude-bot.stable]
upstream = "claude"
model = "sim-claude-20241022"

[routes.claude-bot.candidate]
upstream = "claude"
model = "sim-claude-20250219"

[routes.docs-embed]
model = "docs-embed"
phase = "shadow"
share = 1.0

[routes.docs-embed.stable]
upstream = "sim"
model = "sim-embed-small-2026-01"
index = "docs-small"

[routes.docs-embed.candidate]
upstream = "sim"
model = "sim-embed-large-2026-06"
params = {{ dimensions = 96 }}
index = "docs-large"
"""


def _wait_for(proc, pattern, what, secs=30):
    """Reads the process's output lines until `pattern` matches; returns the match."""
    deadline = time.time() + secs
    seen = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise RuntimeError(f"{what} did not start:\n" + "".join(seen[-20:]))


@pytest.fixture(scope="session")
def stack():
    assert os.path.exists(BIN), f"{BIN} missing: run `cargo build` first"
    procs = []
    with tempfile.TemporaryDirectory() as d:
        sim = subprocess.Popen([BIN, "mock-upstream", "--listen", "127.0.0.1:0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(sim)
        sim_addr = _wait_for(sim, r"listening on (\S+)", "mock-upstream").group(1)
        cfg = os.path.join(d, "understudy.toml")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(dir=d, sim=f"http://{sim_addr}"))
        env = dict(os.environ, UNDERSTUDY_ADMIN_TOKEN=TOKEN, SIM_KEY=UPSTREAM_KEY, RUST_LOG="info")
        server = subprocess.Popen([BIN, "serve", "--config", cfg], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(server)
        m = _wait_for(server, r"proxy=(\S+) admin=(\S+)", "understudy serve")
        try:
            yield {"proxy": f"http://{m.group(1)}", "admin": f"http://{m.group(2)}", "token": TOKEN}
        finally:
            for p in procs:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
