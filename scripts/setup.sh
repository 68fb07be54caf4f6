#!/usr/bin/env bash
# Sets up the project on a fresh Debian machine: Python venv (.venv) and, with --test, the
# Debian packages the integration tests start (RTSP server, Prometheus, Redis, Chromium).
# Idempotent: a second run only checks. Usage: scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ "$want_test" = 1 ]; then
  pkgs=(gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
        gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly python3-gi python3-gst-1.0
        prometheus redis-server chromium chromium-driver)
  missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # The prometheus package starts a system service on :9090; tests run their own.
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.setup-stamp
inputs=$(cat pyproject.toml plugins/*/pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)-$want_test
if [ "$(cat "$stamp" 2>/dev/null)" != "$inputs" ]; then
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  extras=""; [ "$want_test" = 1 ] && extras="[test]"
  .venv/bin/pip install -q --disable-pip-version-check -e ".$extras" -e plugins/webhook-sink
  # mediapipe 0.10.21 bundles the face models (later releases download them at run time);
  # --no-deps keeps out jax/jaxlib and the GUI OpenCV build, which we never import.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps mediapipe==0.10.21
  echo "$inputs" > "$stamp"
fi
.venv/bin/python -c "import mediapipe, cv2, torch, av, aiortc" || { echo "environment check failed" >&2; exit 1; }
