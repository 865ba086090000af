#!/usr/bin/env bash
# Sets up (Debian packages, model files) and runs the whole test suite under ASan+UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
[ -x scripts/fetch-models.sh ] && scripts/fetch-models.sh
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMPASS_SANITIZE=ON -DCMAKE_C_FLAGS_DEBUG="-g -O1"
cmake --build build-asan
ctest --test-dir build-asan --output-on-failure -j2 "$@"
