#!/usr/bin/env bash
# One host, all its accelerators in one mesh (default: 8 GPUs, the chain's sequence over seq=8).
#
#   experiments/recipes/single_host.sh at-exorl-walker_run /data/exorl [8gpu] [seed]
#   experiments/recipes/single_host.sh dt-d4rl-hopper-medium-v2 /data/d4rl 1gpu 0
#
# ExoRL data root: holds datasets/<domain>/<algo>/buffer (ExoRL's download layout); the first
# stage relabels it for the task into <data root>/converted/. D4RL data root: holds
# <dataset>.hdf5 (e.g. hopper-medium-v2.hdf5).
set -euo pipefail
recipe=${1:?recipe name (python -m experiments.recipes.launch list)}
data_root=${2:?data root}
hardware=${3:-8gpu}
seed=${4:-0}
work_root=${WORK_ROOT:-runs/recipes}
cd "$(dirname "$0")/../.."
exec python -m experiments.recipes.launch run "$recipe" --data-root "$data_root" \
    --work-root "$work_root" --hardware "$hardware" --seed "$seed" --stage all
