#!/usr/bin/env bash
# Speed and real-size accuracy on the SD 1.5-size random checkpoint (issue 12 items 6, 8, 9):
#   1. a Release build (build/), and the checkpoint made once (scripts/sd15-checkpoint.sh, sha256-checked)
#   2. mpass conform on ../shared/golden/sd15-size in f32 and bf16 (every output's rel L2 and its bound)
#   3. mpass bench at 512x512 in bf16 and f32, with the time per op class for one step (--profile)
#   4. mpass bench --job on the seed example (examples/seed.prompt, 1 image, 4 steps): one line per pass
# Outputs go to build/bench/*.txt. The machine should be otherwise idle for figures worth quoting.
#   scripts/bench.sh [--no-job | --job-only]     (--no-job: steps 1-3 only; --job-only: 1 and 4)
# The seed job needs the person, face and upscaling models (scripts/fetch-models.sh; MPASS_MODELS or
# models/); its LoRA (tune 753945) and negative embeddings are random SD 1.5-size stand-ins made here.
set -euo pipefail
cd "$(dirname "$0")/.."
job=1 speed=1
[ "${1:-}" = "--no-job" ] && job=0
[ "${1:-}" = "--job-only" ] && speed=0
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target mpass_cli
MPASS=$PWD/build/mpass
GOLDEN=$(cd ../shared/golden/sd15-size && pwd)
OUT=$PWD/build/bench
CKPT=$PWD/build/models/sd15-random.safetensors
mkdir -p "$OUT"
scripts/sd15-checkpoint.sh "$MPASS" "$GOLDEN" "$CKPT"
lscpu | grep -E '^Model name' | tee "$OUT/cpu.txt"

for p in f32 bf16; do
  [ "$speed" = 1 ] || break
  SECONDS=0
  "$MPASS" --threads 2 --precision $p conform "$GOLDEN" --ckpt "$CKPT" > "$OUT/conform-$p.txt" || {
    cat "$OUT/conform-$p.txt"; echo "bench: conform $p failed"; exit 1; }
  echo "conform $p: $(tail -1 "$OUT/conform-$p.txt"), $SECONDS s"
  grep -E '^(te\.[0-9]\.last_hidden_state |unet\.|vae\.)' "$OUT/conform-$p.txt" | sed 's/ max_abs=.*tol(/ (/; s/, max_abs.*)  / /'
done

for p in bf16 f32; do
  [ "$speed" = 1 ] || break
  "$MPASS" --threads 2 --precision $p bench --model "$CKPT" -W 512 -H 512 --steps 3 --profile > "$OUT/bench-$p.txt"
  sed -n '/^op class/,/^step /p;/^bench:/p' "$OUT/bench-$p.txt"
done

[ "$job" = 1 ] || exit 0
M=${MPASS_MODELS:-$PWD/models}
for d in vision upscale; do
  [ -d "$M/$d" ] || { echo "bench: $M/$d is missing: run scripts/fetch-models.sh (or set MPASS_MODELS)"; exit 1; }
done
JM=$OUT/models
mkdir -p "$JM/checkpoints" "$JM/embeddings"
ln -sfn "$CKPT" "$JM/checkpoints/sd15-random.safetensors"
for d in vision upscale; do ln -sfn "$(cd "$M/$d" && pwd)" "$JM/$d"; done
if ! "$MPASS" --models "$JM" tune show 753945 >/dev/null 2>&1; then
  "$MPASS" make-model --preset sd15 --kind lora --seed 1 "$OUT/lora-753945.safetensors" >/dev/null
  "$MPASS" --models "$JM" tune add --id 753945 --name woman --token sks --type lora --title "random SD 1.5-size LoRA" \
    "$OUT/lora-753945.safetensors" >/dev/null
  rm -f "$OUT/lora-753945.safetensors"
fi
for e in cyberrealistic-neg badhandv4 negative-hand; do
  [ -f "$JM/embeddings/$e.safetensors" ] ||
    "$MPASS" make-model --preset sd15 --kind embedding --vectors 2 --seed 7 "$JM/embeddings/$e.safetensors" >/dev/null
done
sed -e 's/^num_images=.*/num_images=1/' -e 's/^steps=.*/steps=4/' examples/seed.prompt > "$OUT/seed-1image-4steps.prompt"
rm -rf "$OUT/out/seed"
/usr/bin/time -v "$MPASS" --threads 2 --models "$JM" bench --job "$OUT/seed-1image-4steps.prompt" --model "$CKPT" \
  --out "$OUT/out" --name seed --quiet > "$OUT/seed-job.txt" 2> "$OUT/seed-job.time"
sed -n '/^image  *pass/,$p' "$OUT/seed-job.txt"
grep -E 'Maximum resident|Elapsed' "$OUT/seed-job.time"
