#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/fuzz_*.c: clang, ASan+UBSan, a portable build) and runs each for
# SECONDS (default 20) from seeds made here, one after the other, on one core (docs/fuzzing.md).
# With --runs=N instead, each target runs N inputs from a fixed random seed: the same commit then
# fuzzes the same inputs on every machine, so a CI result can be reproduced (what CI uses).
# Stops at the first crash, leak, timeout or sanitizer report, with the input that caused it left in
# build-fuzz/findings/<target>/. The corpora grow in build-fuzz/corpus/<target>/ from run to run.
# Every input in fuzz/regressions/<target>/ (past findings, each also a unit test) is replayed first.
#   scripts/fuzz.sh [SECONDS | --runs=N] [TARGET...]     e.g. scripts/fuzz.sh 600 fuzz_request
set -euo pipefail
cd "$(dirname "$0")/.."
budget=(-max_total_time="${1:-20}")
case "${1:-}" in
--runs=*) budget=(-runs="${1#--runs=}" -seed=1) ;;
esac
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi

cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=clang -DMPASS_FUZZ=ON \
  -DMPASS_NATIVE=OFF >/dev/null
cmake --build build-fuzz --target "${targets[@]}"

# Seeds: real byte layouts to start from (the corpus keeps what each run found)
seeds=build-fuzz/seeds
rm -rf "$seeds" && mkdir -p "$seeds"/{prompt,request,ncnn,tflite}
python3 fuzz/make_seeds.py "$seeds" >/dev/null # safetensors/, ckpt/, shard_index/
i=0
for f in examples/*.prompt; do # the first byte picks the form: even = text, odd = JSON
  i=$((i + 1))
  { printf '\x00'; cat "$f"; } >"$seeds/prompt/text$i"
done
printf '\x01{"prompt":{"text":"a cat BREAK a dog","num_images":2,"w":512,"h":768}}' >"$seeds/prompt/json1"
# fuzz_request's first byte picks the door: JSON body, form fields, a path, a listen address
printf '\x00{"prompt": {"text": "a cat", "steps": 3, "callback": "http://127.0.0.1:9/cb"}}' >"$seeds/request/json"
printf '\x01prompt[text]\x00a cat\x00prompt[steps]\x003' >"$seeds/request/form"
printf '\x02/tunes/12/prompts/7/events' >"$seeds/request/path"
printf '\x03[::1]:8080' >"$seeds/request/listen"
for f in models/upscale/*.param; do [ -f "$f" ] && cp "$f" "$seeds/ncnn/"; done
for f in models/vision/selfie_segmentation.tflite; do [ -f "$f" ] && cp "$f" "$seeds/tflite/"; done

seed_dir() {
  case "$1" in
  fuzz_safetensors) echo "$seeds/safetensors" ;;
  fuzz_ckpt) echo "$seeds/ckpt" ;;
  fuzz_shard_index) echo "$seeds/shard_index" ;;
  *) echo "$seeds/${1#fuzz_}" ;;
  esac
}

for t in "${targets[@]}"; do
  corpus=build-fuzz/corpus/$t findings=build-fuzz/findings/$t
  mkdir -p "$corpus" "$findings"
  if [ -d "fuzz/regressions/$t" ]; then
    echo "== $t: the past findings in fuzz/regressions/$t"
    if ! "build-fuzz/$t" -runs=1 "fuzz/regressions/$t"/* >"build-fuzz/$t.log" 2>&1; then
      tail -40 "build-fuzz/$t.log"
      echo "$t: a past finding is back (fuzz/regressions/$t)" >&2
      exit 1
    fi
  fi
  echo "== $t, ${budget[*]}"
  # -max_len: the readers' inputs are whole files, but their structure is in the first 64 KB
  if ! nice -n 10 "build-fuzz/$t" "${budget[@]}" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$findings/" "$corpus" "$(seed_dir "$t")" >"build-fuzz/$t.log" 2>&1; then
    tail -40 "build-fuzz/$t.log"
    echo "$t: a finding, kept in $findings/ (reproduce: build-fuzz/$t $findings/<file>)" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "build-fuzz/$t.log" | tr '\n' ' '
  echo
done
