#!/usr/bin/env bash
# Creates conformance/oracles/.venv with the oracle packages (numpy, torch, transformers,
# megatron-core 0.16.1 without its dependencies). Idempotent; failure is non-fatal (exit 0
# with a message), so callers can treat a missing oracle environment as "skip".
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PY="${PYTHON:-python3}"
MCORE_VERSION="0.16.1"

fail() { echo "oracles/setup.sh: $*; oracle fixtures cannot be regenerated (non-fatal)." >&2; exit 0; }

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" || fail "could not create virtual environment at $VENV with $PY"
fi
VPY="$VENV/bin/python"

if "$VPY" - <<PYEOF 2>/dev/null
import importlib.metadata as m, numpy, torch, transformers
assert m.version("megatron-core") == "$MCORE_VERSION"
from megatron.core.transformer.moe import moe_utils
PYEOF
then
  echo "oracles/setup.sh: environment already complete at $VENV"
  exit 0
fi

"$VPY" -m pip install --disable-pip-version-check -q --upgrade pip || echo "oracles/setup.sh: pip upgrade failed (continuing)" >&2
"$VPY" -m pip install --disable-pip-version-check numpy torch transformers \
  || fail "pip install numpy torch transformers failed"
"$VPY" -m pip install --disable-pip-version-check --no-deps "megatron-core==$MCORE_VERSION" \
  || fail "pip install --no-deps megatron-core==$MCORE_VERSION failed"

"$VPY" - <<'PYEOF' || fail "installed packages do not import"
import importlib.metadata as m
from megatron.core.transformer.moe import moe_utils
import transformers, torch, numpy
print("oracles/setup.sh: ok:", {p: m.version(p) for p in ("numpy", "torch", "transformers", "megatron-core")})
PYEOF
