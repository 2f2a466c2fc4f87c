#!/usr/bin/env bash
# fedshop's two set-up commands (see README):
#   ./dev.sh main   create/refresh .venv, then run the main job on the bundled data
#   ./dev.sh test   create/refresh .venv, then run the test suite
# The environment is pinned by constraints.txt; it is rebuilt when that file or
# pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
STAMP="$VENV/.fedshop-stamp"
want=$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)

ensure_env() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "[dev] creating $VENV with $PYTHON" >&2
        "$PYTHON" -m venv "$VENV"
    fi
    if [[ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
        echo "[dev] installing the pinned stack (constraints.txt); first time takes ~3 min" >&2
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            -c constraints.txt -e '.[dev]'
        echo "$want" > "$STAMP"
    fi
}

# Flower: isolate its home, no phone-home, no per-run re-install of torch.
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
       FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export PATH="$PWD/$VENV/bin:$PATH"

cmd=${1:-}
shift || true
case "$cmd" in
    main)
        ensure_env
        exec fedshop-sim main "$@"
        ;;
    test)
        ensure_env
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./dev.sh main|test [args...]" >&2
        exit 2
        ;;
esac
