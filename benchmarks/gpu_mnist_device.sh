#!/bin/bash
# Device run for issue 17 item 5: MNIST paper preset on CUDA. Run from the repo root, $OUT set.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/.gpu/src/src
G=$PWD/.gpu
{
  date -u; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())'
  python3 -c 'import numpy, scipy, safetensors, typer, rich, yaml, matplotlib, koopmanlens; print("imports ok", koopmanlens.__file__)'
  echo "== cuda splice test"; t=$(date +%s)
  (cd $G/src && timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_capture_surrogate.py -k "network_device or preprocessor_to" 2>&1 | tail -4)
  echo "test took $(( $(date +%s) - t )) s"
  echo "== CLI smoke (cuda, subset 2000, 2 epochs)"; t=$(date +%s)
  timeout 120 python3 -m koopmanlens.cli reproduce mnist --preset paper --device cuda --data-dir $G/mnist --seeds 1 --subset 2000 --epochs 2 --no-report --no-progress --out /tmp/cli-smoke --overwrite 2>&1 | tail -8
  cp /tmp/cli-smoke/metrics.json $OUT/cli-smoke-metrics.json 2>/dev/null
  echo "CLI smoke took $(( $(date +%s) - t )) s"
  echo "== paper preset driver"; t=$(date +%s)
  timeout -s INT ${DRIVER_TIMEOUT:-470} python3 $G/src/benchmarks/gpu_mnist.py --data-dir $G/mnist --out $OUT/gpu-mnist-paper.json --device cuda --seeds 5 --budget ${BUDGET:-420} 2>&1
  echo "driver rc=$? took $(( $(date +%s) - t )) s"
  nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
  date -u
} 2>&1 | tee $OUT/run.log
