#!/usr/bin/env bash
# Sets up (Debian packages, model files) and runs the whole test suite under ASan+UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
[ -x scripts/fetch-models.sh ] && scripts/fetch-models.sh
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMPASS_SANITIZE=ON -DCMAKE_C_FLAGS_DEBUG="-g -O1"
cmake --build build-asan
# -LE sd15: the real-size conformance runs once, in .ci/run from a Release build (2 GB checkpoint, ~3 min)
ctest --test-dir build-asan --output-on-failure -j2 -LE sd15 "$@"
