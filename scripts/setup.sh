#!/usr/bin/env bash
# Sets up the project on a fresh Debian machine: a Python venv (.venv) with the service; with
# --train, also the training extra (torch, onnx, tflite: `monitor train`); with --test, the
# training and test extras and the Debian packages the integration tests start (RTSP server,
# Prometheus, Chromium, Redis).
# Idempotent: a second run only checks, and a venv set up for more (--test) serves less (plain).
# Usage: scripts/setup.sh [--train | --test]
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0; extras=""
case "${1:-}" in
  "") ;;
  --train) extras="train" ;;
  --test) want_test=1; extras="train,test" ;;
  *) echo "usage: scripts/setup.sh [--train | --test]" >&2; exit 2 ;;
esac

if [ -n "${PYTHON:-}" ]; then
  # A PYTHON that names nothing is a mistake to report, not to replace with another Python.
  command -v "$PYTHON" >/dev/null || { echo "PYTHON=$PYTHON: no such program" >&2; exit 1; }
  PY=$PYTHON
else
  PY=python3.11
  command -v "$PY" >/dev/null || PY=python3
fi
ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)
case "$ver" in
  3.11|3.12) ;;
  *) echo "deepfake-monitor needs Python 3.11 or 3.12 (mediapipe 0.10.21); found $PY = $ver. Set PYTHON=/path/to/python3.11." >&2; exit 1 ;;
esac

SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
apt_install() {  # only what is missing, and only on Debian-like systems
  command -v dpkg >/dev/null || return 0
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# A venv needs ensurepip, which Debian ships separately.
if ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then apt_install "python${ver}-venv"; fi

if [ "$want_test" = 1 ]; then
  # A real RTSP server (gst-rtsp-server through Debian's python3-gi), a real Prometheus
  # (and promtool), a real browser for the dashboard test, and a real Redis for the Redis sink.
  apt_install gir1.2-gst-rtsp-server-1.0 gir1.2-gst-plugins-base-1.0 gstreamer1.0-plugins-base \
    gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly python3-gi \
    python3-gst-1.0 prometheus chromium chromium-driver redis-server
  # The prometheus and redis-server packages may start system services (:9090, :6379); tests
  # run their own on free loopback ports.
  $SUDO systemctl disable --now prometheus redis-server >/dev/null 2>&1 || true
fi

# A venv without pip (ensurepip was missing when it was made) is rebuilt.
[ -x .venv/bin/pip ] || { rm -rf .venv; "$PY" -m venv .venv; }
stamp=.venv/.setup-stamp
inputs=$(cat pyproject.toml plugins/*/pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
# The stamp is "<hash of the inputs> <extras installed>": a venv set up with the same inputs and
# at least the extras wanted needs nothing. `make test` then `make run` reinstalled everything
# each time when the stamp named the mode.
had_inputs=""; had_extras=""
if [ -f "$stamp" ]; then read -r had_inputs had_extras < "$stamp" || true; fi
case "$had_inputs" in  # the stamp before extras were recorded: "<hash>-1" after --test, "-0" without
  *-1) had_extras="test,train" ;;
  *-0) had_extras="train" ;;
esac
[ "$had_extras" = "-" ] && had_extras=""
union=$(printf '%s\n' ${extras//,/ } ${had_extras//,/ } | sort -u | paste -sd, -)
if [ "$had_inputs" != "$inputs" ] || [ "$union" != "$had_extras" ]; then
  extras=$union  # never fewer than the venv had: a test venv stays one
  .venv/bin/pip install -q --disable-pip-version-check pip==26.3
  # torch's Linux wheel on PyPI is the CUDA build (several GB of NVIDIA libraries). Take the
  # CPU build from PyTorch's own index first, unless a CPU wheel is already at hand in a
  # PIP_FIND_LINKS folder (as on machines prepared offline). TORCH_INDEX_URL overrides the index;
  # set it empty to take whatever pip finds.
  if [[ ",$extras," == *,train,* ]]; then
    torch_index=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
    for dir in ${PIP_FIND_LINKS:-}; do
      compgen -G "${dir%/}/torch-2.13.0+cpu-*.whl" >/dev/null && torch_index=""
    done
    if [ -n "$torch_index" ] && ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__ != "2.13.0+cpu")' >/dev/null 2>&1; then
      .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 --index-url "$torch_index"
    fi
  fi
  # The service alone needs no torch (`make run`); training and the tests do (--train, --test).
  .venv/bin/pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}" -e plugins/webhook-sink -e plugins/redis-sink
  # mediapipe 0.10.21 bundles the face models (later releases download them at run time);
  # --no-deps keeps out jax/jaxlib and the GUI OpenCV build, which we never import.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps mediapipe==0.10.21
  echo "$inputs ${extras:--}" > "$stamp"
fi
.venv/bin/python -c "import mediapipe, cv2, av, aiortc, monitor.faces" || { echo "environment check failed" >&2; exit 1; }
