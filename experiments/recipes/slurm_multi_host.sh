#!/usr/bin/env bash
# Several hosts as one JAX runtime (jax.distributed): one task per host, every task sees its
# host's GPUs, the mesh spans them all (default: 8 hosts x 8 GPUs = 64 devices, seq=64).
#
#   sbatch --nodes=8 experiments/recipes/slurm_multi_host.sh at-exorl-walker_run /data/exorl 64gpu
#
#SBATCH --job-name=rl-ring
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --time=48:00:00
set -euo pipefail
recipe=${1:?recipe name}
data_root=${2:?data root (shared filesystem)}
hardware=${3:-64gpu}
seed=${4:-0}
work_root=${WORK_ROOT:-runs/recipes}
port=${RL_RING_PORT:-12355}
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/../..}"

# Relabel the ExoRL buffer once, on one task, before the job-wide training (no-op for D4RL).
srun --nodes=1 --ntasks=1 python -m experiments.recipes.launch run "$recipe" \
    --data-root "$data_root" --work-root "$work_root" --stage convert

# Process 0 (the first node) coordinates; SLURM_NTASKS / SLURM_PROCID give the count and rank.
export RL_RING_COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):$port"
srun python -m experiments.recipes.launch run "$recipe" --data-root "$data_root" \
    --work-root "$work_root" --hardware "$hardware" --seed "$seed" --stage train
srun --nodes=1 --ntasks=1 python -m experiments.recipes.launch run "$recipe" \
    --data-root "$data_root" --work-root "$work_root" --seed "$seed" --stage eval
