#!/usr/bin/env bash
# Build the onnxprune image from this checkout with podman and run the container tests against it.
#
#   tools/container_test.sh            # -> python -m pytest -q -s tests/test_container.py
#   tools/container_test.sh -k prune   # extra arguments go to pytest
#
# Uses ../shared/tools/container-base.sh (or $ONNXPRUNE_CONTAINER_BASE) to prepare rootful podman and a local
# stand-in for python:3.11-slim, then sets ONNXPRUNE_CONTAINER_TESTS=1 so that an unavailable podman fails the
# run instead of skipping it. The tests print the build time, the start-up-to-finished-prune time and the owners
# of the files the container writes.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${ONNXPRUNE_CONTAINER_BASE:-../shared/tools/container-base.sh}
[ -f "$base" ] || { echo "container_test.sh: $base not found" >&2; exit 1; }
base="$(cd "$(dirname "$base")" && pwd)/$(basename "$base")"
setup=$(bash "$base")
eval "$setup"
export ONNXPRUNE_CONTAINER_TESTS=1 ONNXPRUNE_CONTAINER_BASE="$base"
exec python -m pytest -q -s tests/test_container.py "$@"
