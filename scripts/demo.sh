#!/usr/bin/env bash
# Sets everything up and runs the main job: the example prompt document in passes
# (examples/demo-background.prompt: the seed example painted onto a real group photo).
#
# With a checkpoint in models/checkpoints/ it runs for real with your models folder. Without one it
# builds models/demo/: a tiny RANDOM-WEIGHT model, a random LoRA registered as the example's tune
# 753945 and random stand-ins for its three negative embeddings. Images made with them are noise;
# what the demo shows is the passes: person masks, per-person repaints and post steps, side by side
# in out/demo-*/passes-0.png.
#
# scripts/demo.sh --mixed runs a job that mixes model families instead (examples/demo-mixed.prompt:
# the persons repainted on the SD 1.5 model, then hires fix on an SDXL model chosen by base_model=).
# Without checkpoints it adds a tiny random SDXL model (demo-random-tiny-xl) to models/demo/; with
# your own, put an SDXL file in models/checkpoints/ and name it in a copy of examples/mixed-sdxl-sd15.prompt.
set -euo pipefail
mixed=0
[ "${1:-}" = "--mixed" ] && mixed=1
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
  [ "$mixed" = 0 ] || [ -f "$models/checkpoints/demo-random-tiny-xl.safetensors" ] ||
    $MPASS make-model --preset tiny-xl "$models/checkpoints/demo-random-tiny-xl.safetensors"
  for e in cyberrealistic-neg badhandv4 negative-hand; do
    [ -f "$models/embeddings/$e.safetensors" ] ||
      $MPASS make-model --preset tiny --kind embedding --vectors 2 --seed 7 "$models/embeddings/$e.safetensors"
  done
fi
doc=examples/demo-background.prompt
[ "$mixed" = 0 ] || doc=examples/demo-mixed.prompt
$MPASS --models "$models" run "$doc" --input-image "$M/vision/images/sample1.jpg" \
  --out out --name "demo-$(date -u +%Y%m%d-%H%M%S)" --debug-passes
