#!/bin/bash
# Second device run (issue 17 item 5): KAE seeds 2..4 of the MNIST paper preset, subject retrained
# with seed 0 (its weight digest and per-class accuracy tell whether it is the first run's network).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/.gpu/src/src
G=$PWD/.gpu
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  timeout -s INT ${DRIVER_TIMEOUT:-430} python3 $G/src/benchmarks/gpu_mnist.py --data-dir $G/mnist \
    --out $OUT/gpu-mnist-paper-seeds2-4.json --device cuda --seeds 5 --first-seed 2 --budget ${BUDGET:-420} 2>&1
  echo "driver rc=$?"; date -u
} 2>&1 | tee $OUT/run2.log
