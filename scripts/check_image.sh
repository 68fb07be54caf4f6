#!/usr/bin/env bash
# Builds deploy/Dockerfile with podman and smoke-tests the image, for machines with no Docker
# daemon. Usage (root, from any directory): scripts/check_image.sh
#
# - Builds from `git archive HEAD` (what a clean checkout holds).
# - Where python:3.11-slim-bookworm cannot be pulled (no registry reachable), set
#   STAND_IN_BASE=1: a stand-in is debootstrapped from Debian's mirror (bookworm minbase with
#   Debian's python3.11, linked at /usr/local/bin/python as in the official image), tagged
#   localhost/deepfake-monitor-stand-in-base (never the official name) and built on with
#   `podman build --from`. It carries this machine's CA bundle, so pip works behind an
#   intercepting proxy; `podman rmi localhost/deepfake-monitor-stand-in-base` removes it.
# - Builds and runs the image with podman's default runtime. Where no container can start (a
#   sandbox that refuses cgroups or setrlimit), set SANDBOX=1: the build's RUN steps then use
#   chroot isolation, and the image's root filesystem is run with chroot, as its user, with its
#   environment and entrypoint.
# - Checks: without a token it refuses to bind 0.0.0.0 (exit 2); with one, the HEALTHCHECK's
#   command passes, the API answers 401 without the token, the demo stream runs, /metrics
#   serves, the service holds no torch (the image installs no `train` extra) and `monitor train`
#   says which extra it needs, and SIGTERM stops it within docker stop's 10 s. Port 8080 on the host.
# Needs: git, podman, curl, python3 (and debootstrap for STAND_IN_BASE). Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=deepfake-monitor:check
STAND_IN=localhost/deepfake-monitor-stand-in-base:bookworm
TOKEN=check-image-token-0123456789abcdef
work=$(mktemp -d /tmp/check-image.XXXXXX)
mounted=()
serve_pids() { :; }  # the image's service processes, once the run mode below is known
cleanup() {
  for pid in $(serve_pids); do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 100); do [ -z "$(serve_pids)" ] && break; sleep 0.1; done  # then unmount
  for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || true; done
  podman rm -f dfm-check >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
! (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null || fail "port 8080 is in use"

if [ "${STAND_IN_BASE:-0}" = 1 ]; then
  echo "== stand-in base image python:3.11-slim-bookworm (debootstrap)"
  base=$work/base
  debootstrap --variant=minbase bookworm "$base" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1
  cp /etc/resolv.conf "$base/etc/"
  cp /etc/ssl/certs/ca-certificates.crt "$work/ca.crt"
  chroot "$base" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install \
    -y -qq --no-install-recommends python3.11 python3.11-venv ca-certificates netbase tzdata \
    && apt-get clean && rm -rf /var/lib/apt/lists/*' >"$work/apt.log" 2>&1
  cp "$work/ca.crt" "$base/etc/ssl/certs/ca-certificates.crt"
  ln -sf /usr/bin/python3.11 "$base/usr/local/bin/python"
  tar -C "$base" -c . | podman import --change 'ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$STAND_IN" >/dev/null 2>&1
  rm -rf "$base"
fi
base_args=(); [ "${STAND_IN_BASE:-0}" = 1 ] && base_args=(--from "$STAND_IN")

echo "== podman build (git archive HEAD)"
mkdir "$work/ctx"
git archive HEAD | tar -x -C "$work/ctx"
start=$SECONDS
isolation=oci; [ "${SANDBOX:-0}" = 1 ] && isolation=chroot
podman build --isolation "$isolation" "${base_args[@]}" -f "$work/ctx/deploy/Dockerfile" -t "$TAG" "$work/ctx" \
    >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; fail "podman build"; }
echo "built in $((SECONDS - start)) s; $(podman image inspect "$TAG" --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')"

if [ "${SANDBOX:-0}" = 1 ]; then
  podman create --name dfm-check "$TAG" >/dev/null
  root=$(podman mount dfm-check)
  mount -t proc proc "$root/proc"
  mounted+=("$root/proc")
  mount --bind /dev "$root/dev"
  mounted+=("$root/dev")
  real_root=$(readlink -f "$root")
  user=$(podman image inspect "$TAG" --format '{{.Config.User}}')
  dir=$(podman image inspect "$TAG" --format '{{.Config.WorkingDir}}')
  mapfile -t env < <(podman image inspect "$TAG" --format '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
  entry=$(podman image inspect "$TAG" --format '{{range .Config.Entrypoint}}{{.}} {{end}}')
  # shellcheck disable=SC2086  # the entrypoint's words, as the image lists them
  in_image() { chroot --userspec="$user:$user" "$root" /usr/bin/env -i "HOME=$dir" "${env[@]}" "$@" \
    /bin/sh -c "cd $dir && exec $entry"; }
  in_image_sh() { chroot --userspec="$user:$user" "$root" /usr/bin/env -i "${env[@]}" /bin/sh -c "cd $dir && $1"; }
  serve_pids() {  # only ours: a service running on this host from another root is left alone
    for pid in $(pgrep -f "/opt/venv/bin/monitor serve"); do
      [ "$(readlink "/proc/$pid/root")" = "$real_root" ] && echo "$pid"
    done
  }
else
  in_image() { podman run --rm --name dfm-check --network host "${@/#/--env=}" "$TAG"; }
  in_image_sh() { podman exec dfm-check /bin/sh -c "$1"; }
  serve_pids() { podman inspect --format '{{.State.Pid}}' dfm-check 2>/dev/null | grep -v '^0$' || true; }
fi

echo "== without a token"
in_image >"$work/refused.log" 2>&1 &
refused=$!
for _ in $(seq 60); do kill -0 "$refused" 2>/dev/null || break; sleep 1; done
kill -0 "$refused" 2>/dev/null && fail "it started without a token on 0.0.0.0"
set +e; wait "$refused"; rc=$?; set -e
out=$(cat "$work/refused.log")
[ "$rc" = 2 ] && grep -q "set server.token" <<<"$out" || fail "expected exit 2 asking for a token, got $rc: $out"
echo "refused (exit 2): $(grep -o "server.host=[^:]*" <<<"$out")"

echo "== with a token"
in_image "MONITOR_SERVER__TOKEN=$TOKEN" >"$work/serve.log" 2>&1 &
for _ in $(seq 60); do curl -sf localhost:8080/healthz >/dev/null && break; sleep 1; done
health=$(sed -n 's/^HEALTHCHECK .* CMD //p' "$work/ctx/deploy/Dockerfile")
in_image_sh "$health" || { tail "$work/serve.log"; fail "the HEALTHCHECK command"; }
echo "healthcheck passes: $(curl -s localhost:8080/healthz)"
code=$(curl -s -o /dev/null -w '%{http_code}' localhost:8080/api/streams || true)
[ "$code" = 401 ] || fail "/api/streams without a token answered $code"
sleep 3
curl -sf -H "Authorization: Bearer $TOKEN" localhost:8080/api/streams | python3 -c '
import json, sys
s = json.load(sys.stdin)[0]
assert s["state"] == "running" and s["fps_analysed"] > 5 and s["tracks"], s
print("demo stream:", s["state"], s["fps_analysed"], "fps analysed,", len(s["tracks"]), "track")' \
  || fail "the demo stream is not running at over 5 fps with a face track"
n=$(curl -sf localhost:8080/metrics | grep -c '^deepfake_monitor_' || true)
[ "$n" -gt 50 ] || fail "/metrics gave $n deepfake_monitor_ samples"
echo "/metrics: $n samples"
pid=$(serve_pids | head -1)
[ -n "$pid" ] || fail "the service's process is gone"
# The default detector (temporal-v1) runs in ONNX Runtime: no torch installed, none loaded.
grep -q onnxruntime "/proc/$pid/maps" || fail "the service has not loaded ONNX Runtime"
! grep -q libtorch "/proc/$pid/maps" || fail "the service has loaded torch"
in_image_sh "/opt/venv/bin/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec(\"torch\") is not None)'" \
  || fail "torch is installed in the image"
set +e; train_out=$(in_image_sh "/opt/venv/bin/monitor train" 2>&1); rc=$?; set -e
[ "$rc" = 2 ] && grep -q "needs torch, onnx, tflite" <<<"$train_out" || fail "monitor train: exit $rc, $train_out"
echo "no torch: ONNX Runtime loaded, libtorch not; monitor train exits 2 naming the packages of the train extra"
start=$(date +%s%N); kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "still running 10 s after SIGTERM"
echo "stopped $(( ($(date +%s%N) - start) / 1000000 )) ms after SIGTERM"
echo "OK: $TAG"
