#!/usr/bin/env bash
# Sets everything up and runs the main job: the example prompt document in passes
# (examples/demo-background.prompt: the seed example painted onto a real group photo).
#
# With a checkpoint in models/checkpoints/ it runs for real with your models folder. Without one it
# builds models/demo/: a tiny RANDOM-WEIGHT model, a random LoRA registered as the example's tune
# 753945 and random stand-ins for its three negative embeddings. Images made with them are noise;
# what the demo shows is the passes: person masks, per-person repaints and post steps, side by side
# in out/demo-*/passes-0.png.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/fetch-models.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build
MPASS=./build/mpass
M=${MPASS_MODELS:-models}

if ls "$M"/checkpoints/*.safetensors "$M"/checkpoints/*.ckpt >/dev/null 2>&1; then
  models=$M
else
  models=$M/demo
  echo "demo: no checkpoint in $M/checkpoints: using a tiny random-weight demo model (its images are noise)" >&2
  mkdir -p "$models/checkpoints" "$models/embeddings"
  for d in vision upscale; do [ -e "$models/$d" ] || ln -s "../$d" "$models/$d"; done
  [ -f "$models/checkpoints/demo-random-tiny.safetensors" ] ||
    $MPASS make-model --preset tiny "$models/checkpoints/demo-random-tiny.safetensors"
  if ! $MPASS --models "$models" tune show 753945 >/dev/null 2>&1; then
    $MPASS make-model --preset tiny --kind lora --seed 1 "$models/demo-lora.safetensors"
    $MPASS --models "$models" tune add --id 753945 --name woman --token sks --type lora \
      --title "random demo LoRA" "$models/demo-lora.safetensors"
    rm -f "$models/demo-lora.safetensors"
  fi
  for e in cyberrealistic-neg badhandv4 negative-hand; do
    [ -f "$models/embeddings/$e.safetensors" ] ||
      $MPASS make-model --preset tiny --kind embedding --vectors 2 --seed 7 "$models/embeddings/$e.safetensors"
  done
fi
$MPASS --models "$models" run examples/demo-background.prompt --input-image "$M/vision/images/sample1.jpg" \
  --out out --name "demo-$(date -u +%Y%m%d-%H%M%S)" --debug-passes
