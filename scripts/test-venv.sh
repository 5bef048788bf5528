#!/usr/bin/env bash
# Makes (or reuses) the virtualenv holding the third-party Python clients that the end-to-end
# tests drive against meshca: tests/python/requirements.txt, a full lock for Python 3.11.
#
#   export MESHCA_TEST_PYTHON=$(scripts/test-venv.sh | tail -1)
#
# The venv is ${MESHCA_TEST_VENV:-target/test-venv} (relative to the repo root). It is built
# only when it is missing, its python no longer runs, or the requirements differ from the copy
# kept inside it at the last successful install; a change rebuilds it from scratch, so no
# package of an older lock lingers. Progress goes to stderr; the last line on stdout is the
# venv's python, as an absolute path.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${MESHCA_TEST_VENV:-target/test-venv}"
requirements=tests/python/requirements.txt
installed="$venv/meshca-requirements.txt"

up_to_date() {
  [[ -x "$venv/bin/python" ]] &&
    "$venv/bin/python" -c '' 2>/dev/null &&
    cmp -s "$requirements" "$installed"
}

if ! up_to_date; then
  echo "test-venv: building $venv from $requirements" >&2
  started=$SECONDS
  mkdir -p "$(dirname "$venv")"
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
  "$venv/bin/python" -m pip check -q --disable-pip-version-check >&2
  # Recorded last, so an install that failed half-way is redone on the next run.
  cp "$requirements" "$installed"
  echo "test-venv: built in $((SECONDS - started)) s" >&2
fi

echo "$(cd "$venv" && pwd)/bin/python"
