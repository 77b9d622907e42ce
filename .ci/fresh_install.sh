#!/usr/bin/env bash
# A new user's machine, which CI's own environment cannot show: a fresh virtual environment in a temporary
# folder, the README's install command run with that environment's pip and never activated, then the smoke
# slice of the suite (plan, a tiny launch, a Ray Job submitted to a multi-node cluster) with that interpreter.
# PATH holds only the system's folders, so nothing may depend on which `python` a shell finds first.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q -e ".[test]"            # the README's install command, unactivated
export PATH=/usr/local/bin:/usr/bin:/bin
"$tmp/venv/bin/vpgrid" plan grids/demo.yaml            # the console script the install made
"$tmp/venv/bin/python" -m pytest -q -m smoke -p no:cacheprovider
