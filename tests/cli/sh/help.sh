#!/usr/bin/env bash
# Every command listed by `mpass --help` answers `--help`: exit 0, its usage on stdout (issue 11 item 6);
# `mpass --version` names the version, the commit and the compute path.
set -euo pipefail
MPASS=$1
cmds=$("$MPASS" --help | sed -n '/^commands:/,/^$/p' | awk 'NF && $1 != "commands:" {print $1}')
[ "$(echo "$cmds" | wc -w)" -ge 12 ] || { echo "too few commands listed: $cmds"; exit 1; }
for c in $cmds; do
  out=$("$MPASS" "$c" --help 2>/dev/null) || { echo "mpass $c --help: exit $?"; exit 1; }
  # here-strings, not pipes: under pipefail a writer cut short by grep -q's early exit fails the test
  grep -q "usage: mpass.* $c\b\|usage: mpass $c" <<< "${out%%$'\n'*}" || { echo "mpass $c --help: no usage line: $out"; exit 1; }
  echo "ok $c"
done
v=$("$MPASS" --version)
echo "$v"
grep -q "^mpass [0-9]" <<< "$v" && grep -q "^commit " <<< "$v" && grep -q "^compute: precision " <<< "$v"
# `mpass --version` names OpenBLAS's kernel set, and says so where OPENBLAS_CORETYPE holds an AVX-512 CPU
# to a set without AVX-512 (core/cpu_kernels.h: mp_openblas_describe)
blas=$(env -u OPENBLAS_CORETYPE "$MPASS" --version | grep '^OpenBLAS kernels: ')
grep -qv 'held there' <<< "$blas" || { echo "OPENBLAS_CORETYPE unset, but: $blas"; exit 1; }
if [ "$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -cxE 'avx512(f|cd|bw|dq|vl)')" = 5 ]; then
  held=$(OPENBLAS_CORETYPE=Haswell "$MPASS" --version | grep '^OpenBLAS kernels: ')
  [ "$held" = "OpenBLAS kernels: Haswell, held there by OPENBLAS_CORETYPE=Haswell on a CPU with AVX-512: unset it for OpenBLAS's AVX-512 kernels" ] ||
    { echo "OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU, but: $held"; exit 1; }
fi
