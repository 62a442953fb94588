#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, the official OpenAI and Anthropic Python SDKs
# against the real binary, and the end-to-end test with a real Prometheus and Alertmanager.
# Installs what those need when it is missing (a Python virtualenv with the SDKs; Debian's
# prometheus and prometheus-alertmanager; Debian's postgresql, whose binaries the fleet tests
# run as throwaway clusters), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
if ! "$venv/bin/python" -c 'import openai, anthropic, pytest' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r tests/sdk/requirements.txt
fi
export UNDERSTUDY_TEST_PYTHON="$PWD/$venv/bin/python"

# Debian names the Alertmanager binary prometheus-alertmanager.
if ! command -v prometheus >/dev/null \
  || ! { command -v alertmanager || command -v prometheus-alertmanager; } >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      prometheus prometheus-alertmanager >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      prometheus prometheus-alertmanager >/dev/null
  fi
fi

# The fleet and durability tests start their own PostgreSQL clusters from these binaries (the
# package's own cluster is not used).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      postgresql >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      postgresql >/dev/null
  fi
fi

cargo test --workspace --all-targets
