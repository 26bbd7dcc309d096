#!/usr/bin/env bash
# Build .venv-bfcl: the official BFCL package (bfcl-eval 2026.3.23) in its own venv, for the `bfcl` test tier
# (tests/test_bfcl_official.py grades the same completions with evaluation.bfcl and with the official checker).
#       make bfcl-venv      (or: bash evaluation/bfcl_venv.sh; ~1 min, ~0.6 GB)
#
# Why a separate venv: bfcl-eval pins numpy==1.26.4 and imports every vendor's API client (openai, anthropic,
# cohere, mistralai, google-genai, qwen-agent, ...) when its AST checker is imported, none of which the project
# needs. Its declared dependencies are installed except sentence-transformers and faiss-cpu (they pull torch and
# serve only the agentic memory categories, imported lazily); soundfile is added because qwen-agent imports it
# without declaring it. No API key or network is needed at run time: the handlers only build clients.
# Idempotent: a finished venv is marked by .venv-bfcl/.complete; re-running rebuilds only when that is missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BFCL_VENV:-$REPO/.venv-bfcl}"
PY_BASE="${PYTHON:-python3}"
BFCL_VERSION="2026.3.23"
SKIP="sentence-transformers faiss-cpu"

if [[ -f "$VENV/.complete" ]]; then
    echo "[bfcl-venv] $VENV is complete; delete it to rebuild"
    exit 0
fi
rm -rf "$VENV"
"$PY_BASE" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q --no-deps "bfcl-eval==$BFCL_VERSION"

# Its declared requirements (markers for extras dropped), less the skipped ones.
REQS="$(mktemp)"
trap 'rm -f "$REQS"' EXIT
SKIP="$SKIP" "$PY" - > "$REQS" <<'EOF_PY'
import importlib.metadata as m, os, re
skip = set(os.environ["SKIP"].split())
for r in m.requires("bfcl-eval"):
    if "extra ==" in r:
        continue
    name = re.split(r"[ <>=!;\[]", r, maxsplit=1)[0].lower().replace("_", "-")
    if name not in skip:
        print(r)
EOF_PY
"$PY" -m pip install -q -r "$REQS" soundfile

# Smoke check: the exact modules our driver imports.
"$PY" - <<'EOF_PY'
import importlib.metadata as m
import bfcl_eval.eval_checker.eval_runner  # noqa: F401
import bfcl_eval.model_handler.local_inference.qwen_fc  # noqa: F401
print(f"[bfcl-venv] bfcl-eval {m.version('bfcl-eval')}, numpy {m.version('numpy')}")
EOF_PY
date -u +%FT%TZ > "$VENV/.complete"
echo "[bfcl-venv] ready: $PY"
