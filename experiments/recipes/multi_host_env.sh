#!/usr/bin/env bash
# Several hosts without a scheduler: run this on every host with its rank (0 .. N-1); host 0's
# address is the coordinator. Each process feeds its own devices; the mesh spans all hosts.
#
#   host0$ experiments/recipes/multi_host_env.sh at-exorl-walker_run /data/exorl 10.0.0.1:12355 8 0
#   host1$ experiments/recipes/multi_host_env.sh at-exorl-walker_run /data/exorl 10.0.0.1:12355 8 1
#   ...
# Convert the ExoRL buffer first, once: ... launch run RECIPE --data-root ... --stage convert
set -euo pipefail
recipe=${1:?recipe name}
data_root=${2:?data root (same path on every host)}
export RL_RING_COORDINATOR=${3:?coordinator host:port (host 0)}
export RL_RING_NUM_PROCESSES=${4:?number of hosts}
export RL_RING_PROCESS_ID=${5:?rank of this host}
hardware=${HARDWARE:-64gpu}
seed=${SEED:-0}
work_root=${WORK_ROOT:-runs/recipes}
cd "$(dirname "$0")/../.."
python -m experiments.recipes.launch run "$recipe" --data-root "$data_root" \
    --work-root "$work_root" --hardware "$hardware" --seed "$seed" --stage train
if [ "$RL_RING_PROCESS_ID" = 0 ]; then
    python -m experiments.recipes.launch run "$recipe" --data-root "$data_root" \
        --work-root "$work_root" --seed "$seed" --stage eval
fi
