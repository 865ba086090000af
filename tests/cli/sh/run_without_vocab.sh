#!/usr/bin/env bash
# `mpass run` works from one checkpoint file: no vocabulary anywhere on disk (MPASS_VOCAB unset, an
# empty models folder, run from a temporary folder), so the tokenizer uses the copy compiled in
# (issue 11 item 1). Also `mpass tokenize` with the built-in copy gives the well-known ids.
set -euo pipefail
MPASS=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
unset MPASS_VOCAB MPASS_MODELS
mkdir models
"$MPASS" make-model --preset tiny tiny.safetensors >/dev/null
printf 'a photo of a cat\nseed=7\nsteps=1\nw=64\nh=64\n' > job.prompt

"$MPASS" --threads 2 --models "$tmp/models" run job.prompt --model tiny.safetensors --out out --quiet --rng cpu > dir.txt
test -f "$(cat dir.txt)/0.png" || { echo "no image in $(cat dir.txt)"; ls -R out; exit 1; }
ids=$("$MPASS" --models "$tmp/models" tokenize "a photo of a cat")
echo "$ids"
echo "$ids" | grep -q "49406 320 1125 539 320 2368 49407"
