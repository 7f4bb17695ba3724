#!/bin/bash
# Fourth device run (issue 17), one command, for the next session that is lent a GPU:
# (1) the CUDA-only tests (the device paths built without a GPU: topology distance products and edit
#     solves on the device, fused optimisers, the splice), (2) where a training step's time goes now
#     (fewer launches: Taylor blocks in one product, fused Horner, fused optimisers), (3) KAE seed 3 of
#     the MNIST paper preset (seeds 0, 1, 2 and 4 ran in the third run; subject seed 0 retrained, its
#     weight digest says whether it is the same network), (4) the whole `koopmanlens run mnist
#     --device cuda --seeds 1` for the per-stage times, if time is left.
# Run from the repo root with $OUT set; .whl (the wheels of the packages the image lacks) and
# .gpu/mnist carried: run(command="bash benchmarks/gpu_mnist_device4.sh", carry=[".whl", ".gpu/mnist"]).
source benchmarks/gpu_device_env.sh
{
  gpu_banner
  echo "== 1 CUDA-only tests [$(left) s left]"
  timeout 120 python3 -m pytest -q -p no:cacheprovider -k "cuda or device" tests/test_topology.py tests/test_editing.py \
    tests/test_kae.py tests/test_capture_surrogate.py
  echo "rc=$? [$(left) s left]"
  echo "== 2 step profile [$(left) s left]"
  timeout 90 python3 benchmarks/gpu_profile.py --out $OUT/gpu-profile-after.json
  echo "== 3 paper preset, KAE seed 3 [$(left) s left]"
  timeout -s INT 240 python3 benchmarks/gpu_mnist.py --data-dir $D --out $OUT/gpu-mnist-paper-seed3.json \
    --device cuda --seeds 4 --first-seed 3 --budget 1000
  echo "rc=$? [$(left) s left]"
  L=$(( $(left) - 20 ))
  if [ "$L" -gt 200 ]; then
    echo "== 4 koopmanlens run mnist --device cuda --seeds 1 [$L s allowed]"
    timeout -s INT $L python3 -m koopmanlens.cli run mnist --device cuda --seeds 1 --data-dir $D \
      --out /tmp/run-mnist --no-progress --no-report
    echo "rc=$? [$(left) s left]"
    cp /tmp/run-mnist/metrics.json $OUT/gpu-run-mnist-metrics-after.json
  fi
  nvidia-smi --query-gpu=name,memory.used --format=csv; date -u
} 2>&1 | tee $OUT/run.log
