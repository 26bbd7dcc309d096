# Sourced by every slurm/*.sbatch job (never run directly): site set-up, the Python to use, per-task overrides.
#
# The job runs in the repository root (submit.py passes --chdir; by hand, sbatch from the repository root).
# Site-specific lines live in slurm/site.local.sh (not committed; copy slurm/site.example.sh), or in the file named
# by EAFT_SITE. It may define `eaft_site_setup` (modules, container, venv), EAFT_PYTHON and EAFT_EXEC.
#
# Array tasks: when EAFT_TASKS names a file, line N+1 (N = SLURM_ARRAY_TASK_ID) holds this task's Hydra overrides,
# shell-quoted (submit.py writes it with shlex.quote); they go after the job's own arguments, in TASK_ARGS.

set -euo pipefail

if [[ ! -f slurm/common.sh ]]; then
    echo "[eaft] run from the repository root (sbatch --chdir=<repo>); cwd is $PWD" >&2
    exit 2
fi
EAFT_SITE=${EAFT_SITE:-slurm/site.local.sh}
set +u  # module systems and activate scripts read unset variables
if [[ -f "$EAFT_SITE" ]]; then
    # shellcheck disable=SC1090
    source "$EAFT_SITE"
fi
if declare -F eaft_site_setup >/dev/null; then
    eaft_site_setup
fi
set -u

PY=${EAFT_PYTHON:-.venv/bin/python}
# A container or wrapper put in front of every command (e.g. "apptainer exec --nv eaft.sif"); empty by default.
read -r -a EXEC <<< "${EAFT_EXEC:-}"
export HYDRA_FULL_ERROR=1 PYTHONUNBUFFERED=1

TASK_ARGS=()
if [[ -n "${EAFT_TASKS:-}" && -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$EAFT_TASKS")
    if [[ -z "$line" ]]; then
        echo "[eaft] $EAFT_TASKS has no line for array task $SLURM_ARRAY_TASK_ID" >&2
        exit 2
    fi
    # Parsed, never run: xargs reads the shell quoting submit.py writes (shlex.quote: '...' and "'") and prints
    # each argument NUL-terminated, so no $(...), glob or variable in a task line is ever expanded.
    if ! printf '%s' "$line" | xargs -r printf '' 2>/dev/null; then
        echo "[eaft] $EAFT_TASKS line $((SLURM_ARRAY_TASK_ID + 1)) is not shell-quoted arguments: $line" >&2
        exit 2
    fi
    while IFS= read -r -d '' arg; do  # a read loop, not `mapfile -d`: that needs bash 4.4 (RHEL 7 has 4.2)
        TASK_ARGS+=("$arg")
    done < <(printf '%s' "$line" | xargs -r printf '%s\0')
fi

eaft_banner() {
    echo "[eaft] $(date -Is) job ${SLURM_JOB_ID:-?} (array ${SLURM_ARRAY_JOB_ID:-none}_${SLURM_ARRAY_TASK_ID:-none})" \
         "restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-$(hostname)}: $*"
}
