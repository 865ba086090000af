#!/usr/bin/env bash
# The SD 1.5-size random checkpoint the ../shared/golden/sd15-size goldens were computed from:
# `mpass make-model --preset sd15 --dtype f16` (deterministic, 2 GB), made once per build tree and
# checked against the sha256 its manifests name. A stamp beside it (sha256, size, mtime) spares the
# 2 GB re-hash on later runs.
#   scripts/sd15-checkpoint.sh MPASS GOLDEN_DIR OUT.safetensors
set -euo pipefail
MPASS=$1 GOLDEN=$2 OUT=$3
want=$(sed -n 's/.*"ckpt_sha256": *"\([0-9a-f]\{64\}\)".*/\1/p' "$GOLDEN/unet.json" | head -1)
[ -n "$want" ] || { echo "sd15-checkpoint: no ckpt_sha256 in $GOLDEN/unet.json" >&2; exit 1; }
stamp="$OUT.sha256"
if [ -f "$OUT" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want $(stat -c %s:%Y "$OUT")" ]; then
  echo "sd15-checkpoint: $OUT (sha256 $want, checked before)"
  exit 0
fi
mkdir -p "$(dirname "$OUT")"
rm -f "$stamp"
if [ ! -f "$OUT" ] || [ "$(sha256sum "$OUT" | cut -d' ' -f1)" != "$want" ]; then
  start=$(date +%s)
  "$MPASS" make-model --preset sd15 --dtype f16 "$OUT.partial" >/dev/null
  mv "$OUT.partial" "$OUT"
  echo "sd15-checkpoint: made $OUT in $(($(date +%s) - start)) s"
fi
got=$(sha256sum "$OUT" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  echo "sd15-checkpoint: $OUT has sha256 $got, the sd15-size manifests expect $want: make-model's output changed" >&2
  exit 1
fi
echo "$want $(stat -c %s:%Y "$OUT")" > "$stamp"
echo "sd15-checkpoint: $OUT (sha256 $want)"
