#!/usr/bin/env bash
# Installs AnyRef into the active Python environment (make one first: python3 -m venv .venv && . .venv/bin/activate).
#   ./install.sh        the library, its CLI, training and evaluation extras
#   ./install.sh test   the same plus the test tools and ImageBind's reference code for the equality tests
set -euo pipefail
cd "$(dirname "$0")"
pip install -q --upgrade pip
pip install -q -c requirements/constraints.txt torch torchvision torchaudio
if [ "${1:-}" = "test" ]; then
    pip install -q -c requirements/constraints.txt -e ".[test]"
    # ImageBind's own code, only as the numerical reference of tests/test_audio.py (see the file's header)
    pip install -q --no-deps -r requirements/imagebind-reference.txt
else
    pip install -q -c requirements/constraints.txt -e ".[train,eval]"
fi
