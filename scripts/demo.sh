#!/usr/bin/env bash
# Sets up and runs the main job on built-in defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build
./build/mpass conform ../shared/golden/tiny --cases tok,te
