#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, the official OpenAI and Anthropic Python SDKs
# against the real binary, and the end-to-end test with a real Prometheus and Alertmanager.
# Installs what those need when it is missing (a Python virtualenv with the SDKs, Playwright and
# kubernetes-validate; Debian's chromium, prometheus, prometheus-alertmanager and iproute2; a
# kubectl that renders kustomizations; Debian's postgresql, whose binaries the fleet tests run as
# throwaway clusters), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
if ! "$venv/bin/python" -c 'import openai, anthropic, pytest, playwright' 2>/dev/null; then
  python3 -m venv "$venv"
  # Playwright drives Debian's Chromium (below); its own browser downloads are never used.
  "$venv/bin/pip" install -q -r tests/sdk/requirements.txt -r tests/ui/requirements.txt
fi
# The Kubernetes schemas for tests/kubernetes.rs.
if ! "$venv/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0
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

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# tests/image.rs plays the Dockerfile in network namespaces: it brings their loopback up.
if ! command -v ip >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
fi
# It needs root for namespaces and overlays: required where this script has that without asking.
if { [ "$(id -u)" = 0 ] && unshare --mount --net true; } 2>/dev/null \
  || sudo -n unshare --mount --net true 2>/dev/null; then
  export UNDERSTUDY_REQUIRE_IMAGE_TEST=1
else
  echo "note: no root (or passwordless sudo) that may make namespaces: tests/image.rs skips running the image's layout" >&2
fi

# tests/kubernetes.rs renders the kustomizations. A kubectl on the PATH may be missing or a
# wrapper that does not run (google-cloud-sdk's); then Debian 12's kubernetes-client (1.20, its
# kubectl has `kustomize`) is unpacked into target/tools without installing it system-wide.
if ! kubectl kustomize deploy/kubernetes/base >/dev/null 2>&1; then
  tools="$(realpath -m "${CARGO_TARGET_DIR:-target}")/tools"
  kubectl="$tools/usr/bin/kubectl"
  if ! "$kubectl" kustomize deploy/kubernetes/base >/dev/null 2>&1; then
    mkdir -p "$tools"
    if ! (cd "$tools" && apt-get download kubernetes-client >/dev/null 2>&1); then
      as_root apt-get update -qq
      (cd "$tools" && apt-get download kubernetes-client >/dev/null)
    fi
    dpkg -x "$tools"/kubernetes-client_*.deb "$tools"
  fi
  export UNDERSTUDY_KUBECTL="$kubectl"
fi

# The fleet and durability tests start their own PostgreSQL clusters from these binaries (the
# package's own cluster is not used).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postgresql >/dev/null
fi

cargo test --workspace --all-targets
