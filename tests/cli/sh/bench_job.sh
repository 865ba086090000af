#!/usr/bin/env bash
# `mpass bench --job` (issue 12 item 6): a prompt document run as `mpass run` runs it, one line per pass
# (name, size, model evaluations, seconds, s per evaluation) and the total; and `mpass bench --profile`
# (item 9): the time per op class for one step. On the tiny random model.
set -euo pipefail
MPASS=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
unset MPASS_VOCAB MPASS_MODELS
mkdir models
"$MPASS" make-model --preset tiny tiny.safetensors >/dev/null
# two images, each a scene and a hires fix (diffusion passes) and film grain (no model); DPM++ SDE
# evaluates the model twice per step but the last: 2 steps = 3 evaluations
printf 'a photo of a cat\nseed=7\nsteps=2\nw=64\nh=64\nnum_images=2\nhires_fix=true\nfilm_grain=true\nscheduler=dpm++sde\n' > job.prompt
"$MPASS" --threads 2 --models "$tmp/models" bench --job job.prompt --model tiny.safetensors --out out --name j --quiet > bench.txt
cat bench.txt
test -f out/j/0.png && test -f out/j/1.png || { echo "bench --job did not write the job's images"; exit 1; }
# the table: rows between the header and the total line, after the load line
rows=$(sed -n '/^image  *pass/,/^total/p' bench.txt | sed '1,2d;$d')
n_rows=$(echo "$rows" | grep -c .)
n_passes=$(sed -n 's/^bench-job: passes=\([0-9]*\) .*/\1/p' bench.txt)
[ "$n_rows" = 6 ] && [ "$n_passes" = 6 ] || { echo "expected 6 pass lines, found $n_rows (passes=$n_passes)"; exit 1; }
# every diffusion pass of result.json has its line with evaluations, in order
n_diffusion=$(grep -c '"pass":' out/j/result.json)
n_eval_rows=$(echo "$rows" | awk '$NF != "-" && $0 ~ /[0-9]+x[0-9]+/' | grep -c .)
[ "$n_diffusion" = 4 ] && [ "$n_eval_rows" = 4 ] || { echo "diffusion passes: result.json $n_diffusion, lines $n_eval_rows"; exit 1; }
echo "$rows" | grep -E '^1 +scene +64x64 +3 ' >/dev/null || { echo "image 1 scene: expected 64x64 and 3 evaluations"; exit 1; }
echo "$rows" | grep -E '^2 +film grain +- +0 ' >/dev/null || { echo "image 2 film grain: expected no size, 0 evaluations"; exit 1; }
# the total line sums the evaluations and matches the machine-readable line
sum=$(echo "$rows" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+x[0-9]+$|^-$/) {s += $(i + 1); break}} END {print s}')
total=$(awk '$1 == "total" {print $2}' bench.txt)
evals=$(sed -n 's/.* evaluations=\([0-9]*\) .*/\1/p' bench.txt)
[ "$sum" = "$total" ] && [ "$total" = "$evals" ] && [ "$total" -ge 8 ] || { echo "total evaluations: rows $sum, total $total, line $evals"; exit 1; }
grep -q "^peak RSS [0-9]* MB" bench.txt || { echo "no peak RSS line"; exit 1; }

# --profile on the synthetic bench: a row per op class with calls, and the rows add up to the step
"$MPASS" --threads 2 bench --model tiny.safetensors -W 64 -H 64 --steps 2 --no-vae --profile > profile.txt
cat profile.txt
for c in "conv 3x3" "dense/1x1" "attention" "norms"; do
  grep -E "^$c +[0-9.]+ +[0-9.]+% +[1-9][0-9]*$" profile.txt >/dev/null || { echo "no timed row for $c"; exit 1; }
done
grep -E '^other +-?[0-9.]+ ' profile.txt >/dev/null && grep -E '^step +[0-9.]+ +100.0%' profile.txt >/dev/null ||
  { echo "no other/step rows"; exit 1; }
awk '/^(conv 3x3|dense\/1x1|attention|norms|other) / {split(substr($0, 13), f, " "); s += f[1]}
     /^step / {t = $2} END {d = s - t; if (d < 0) d = -d; exit !(t > 0 && d <= 0.0003 + 0.01 * t)}' profile.txt ||
  { echo "the op classes do not add up to the step"; exit 1; }

# --batch N: each step one UNet forward of N rows (N/2 images), and the time per image (both printed to
# 0.01 s, hence the tolerance); odd N is refused
"$MPASS" --threads 2 bench --model tiny.safetensors -W 64 -H 64 --steps 2 --no-vae --batch 4 > batch.txt
grep -q '^step 2 (UNet batch 4 + CFG)' batch.txt || { echo "no batch-4 step line"; cat batch.txt; exit 1; }
grep -E '^bench: .* step_s=([0-9.]+) .* batch=4 step_per_image_s=[0-9.]+$' batch.txt >/dev/null ||
  { echo "no batch=4 step_per_image_s on the bench line"; cat batch.txt; exit 1; }
awk '/^bench: / {for (i = 1; i <= NF; i++) {split($i, kv, "="); v[kv[1]] = kv[2]}}
     END {d = v["step_s"] / 2 - v["step_per_image_s"]; if (d < 0) d = -d; exit !(d <= 0.008)}' batch.txt ||
  { echo "step_per_image_s is not step_s / 2"; exit 1; }
rc=0
"$MPASS" bench --model tiny.safetensors --batch 3 > /dev/null 2>&1 || rc=$?
[ "$rc" = 2 ] || { echo "--batch 3: expected a usage error (2), got $rc"; exit 1; }
