#!/usr/bin/env bash
# mpass conform: a manifest whose "ckpt" is an absolute path uses that file as is (issue 11 item 9).
# Copies the tiny suite's text-encoder case into a temporary folder without the checkpoint, pointing
# the manifest at the checkpoint by absolute path.
set -euo pipefail
MPASS=$1 GOLDEN=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$GOLDEN/te.safetensors" "$tmp/"
sed "s|\"ckpt\": *\"tiny.safetensors\"|\"ckpt\": \"$GOLDEN/tiny.safetensors\"|" "$GOLDEN/te.json" > "$tmp/te.json"
grep -q "\"ckpt\": \"/" "$tmp/te.json" || { echo "the manifest rewrite did not give an absolute ckpt path"; exit 1; }
[ ! -e "$tmp/tiny.safetensors" ]
"$MPASS" conform "$tmp" --cases te
