# Site settings for the slurm/ scripts: copy to slurm/site.local.sh (git-ignored) and edit, or point EAFT_SITE
# at another file. submit.py sources it before calling sbatch, and every job sources it again when it starts
# (slurm/common.sh), so this is the one place for partitions, accounts, time limits, modules and containers.
#   cp slurm/site.example.sh slurm/site.local.sh && $EDITOR slurm/site.local.sh
#   python slurm/submit.py --experiments table1-sft,table1-eaft --gpus-per-node 8   (configs/experiment/)

# --- sbatch defaults: sbatch reads SBATCH_* from the environment (sbatch(1), "INPUT ENVIRONMENT VARIABLES") ---
export SBATCH_PARTITION=gpu
export SBATCH_ACCOUNT=my-project
# export SBATCH_QOS=normal
# export SBATCH_CONSTRAINT=a100-80gb

# --- resources submit.py asks for, per stage (extra sbatch options) ---
EAFT_GPUS_PER_NODE=8                                          # --gpus-per-node for data, train and eval jobs
EAFT_TRAIN_SBATCH="--time=2-00:00:00 --cpus-per-task=64 --mem=0 --exclusive"
EAFT_EVAL_SBATCH="--time=12:00:00 --cpus-per-task=32 --mem=256G"   # also the precompute job (1 GPU)
EAFT_DATA_SBATCH="--time=12:00:00 --cpus-per-task=32 --mem=256G"
EAFT_CPU_SBATCH="--time=01:00:00 --cpus-per-task=4 --mem=16G"   # finalize, tables (add --partition=cpu)

# --- inside every job ---
# EAFT_PYTHON=/path/to/venv/bin/python        # default: .venv/bin/python in the repository
# EAFT_EXEC="apptainer exec --nv --bind $PWD eaft.sif"   # a prefix for every command (container, wrapper)
eaft_site_setup() {
    # module load cuda/12.4 gcc/12          # what your cluster needs before Python starts
    export HF_HOME=${HF_HOME:-$HOME/.cache/huggingface}     # shared model cache (compute nodes may be offline:
    # export HF_HUB_OFFLINE=1                                # pre-download on a login node, then set this)
    export WANDB_MODE=${WANDB_MODE:-offline}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
}
