# Sourced by ci/book and ci/test: create or reuse .venv at the repository root and make sure
# the project, with its book and test extras, is installed in it at the pinned versions.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PYTHON_FOR_VENV="${PYTHON:-python3}"

if [ ! -x "$PY" ]; then
  echo "[venv] creating $VENV with $($PYTHON_FOR_VENV --version)"
  "$PYTHON_FOR_VENV" -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade pip
fi

# Reinstall only when the dependencies or their pins changed (the install itself is editable).
STAMP="$VENV/.covidlib-install-stamp"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/ci/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[venv] installing covidlib[test] (pinned) into $VENV"
  start=$(date +%s)
  "$PY" -m pip install --quiet --disable-pip-version-check -c "$ROOT/ci/constraints.txt" -e "$ROOT[test]" 2>&1 \
    | grep -v -E "^WARNING: Location .* is ignored" || true
  "$PY" -c "import covidlib, torch, papermill, nbval, jupytext" \
    || { echo "[venv] install failed: covidlib or a tool is not importable" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
  echo "[venv] ready in $(( $(date +%s) - start )) s"
fi
export PATH="$VENV/bin:$PATH"
