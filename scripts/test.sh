#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, the official OpenAI and Anthropic Python SDKs
# against the real binary, and the end-to-end test with a real Prometheus and Alertmanager.
# Installs what those need when it is missing (a Python virtualenv with the SDKs and Playwright;
# Debian's chromium, prometheus and prometheus-alertmanager), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
if ! "$venv/bin/python" -c 'import openai, anthropic, pytest, playwright' 2>/dev/null; then
  python3 -m venv "$venv"
  # Playwright drives Debian's Chromium (below); its own browser downloads are never used.
  "$venv/bin/pip" install -q -r tests/sdk/requirements.txt -r tests/ui/requirements.txt
fi
export UNDERSTUDY_TEST_PYTHON="$PWD/$venv/bin/python"

# The review page's test (tests/review.rs) runs Debian's chromium headless.
packages=()
command -v chromium >/dev/null || packages+=(chromium)

# Debian names the Alertmanager binary prometheus-alertmanager.
if ! command -v prometheus >/dev/null \
  || ! { command -v alertmanager || command -v prometheus-alertmanager; } >/dev/null; then
  packages+=(prometheus prometheus-alertmanager)
fi
if [ "${#packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${packages[@]}" >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${packages[@]}" >/dev/null
  fi
fi

cargo test --workspace --all-targets
