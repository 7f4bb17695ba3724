#!/bin/bash
# Third device run (issues 17 and 15), one command: (1) KAE seed 4 of the MNIST paper preset (seeds
# 0-3 ran in the first two device runs; subject seed 0 retrained, its weight digest says whether it
# is the same network), (2) a tiny `koopmanlens run` of every stage on the device (smoke), (3) the
# whole `koopmanlens run mnist --device cuda --seeds 1` (baselines and editing baselines included),
# only if the smoke passed and time is left, (4) where a training step's time goes (profile).
# Run from the repo root with $OUT set; .whl (the wheels of the packages the image lacks) and
# .gpu/mnist carried.
source benchmarks/gpu_device_env.sh
{
  gpu_banner
  echo "== 1 paper preset, KAE seed 4 [$(left) s left]"
  timeout -s INT 240 python3 benchmarks/gpu_mnist.py --data-dir $D --out $OUT/gpu-mnist-paper-seed4.json \
    --device cuda --seeds 5 --first-seed 4 --budget 1000
  echo "rc=$? [$(left) s left]"
  echo "== 2 smoke: koopmanlens run, every stage, tiny, cuda"
  if timeout 90 python3 -m koopmanlens.cli run benchmarks/gpu_smoke.toml --device cuda --data-dir $D \
      --out /tmp/smoke --no-progress --no-report; then
    cp /tmp/smoke/metrics.json $OUT/gpu-smoke-metrics.json
    echo "== 3 koopmanlens run mnist --device cuda --seeds 1 [$(left) s left]"
    L=$(( $(left) - 45 ))
    timeout -s INT $L python3 -m koopmanlens.cli run mnist --device cuda --seeds 1 --data-dir $D \
      --out /tmp/run-mnist --no-progress --no-report
    echo "rc=$? [$(left) s left]"
    cp /tmp/run-mnist/metrics.json $OUT/gpu-run-mnist-metrics.json
  else
    echo "smoke failed: the whole run is skipped"
  fi
  echo "== 4 step profile [$(left) s left]"
  timeout $(( $(left) - 5 )) python3 benchmarks/gpu_profile.py --out $OUT/gpu-profile.json
  nvidia-smi --query-gpu=name,memory.used --format=csv; date -u
} 2>&1 | tee $OUT/run.log
