# Sourced by the device scripts (benchmarks/gpu_mnist_device*.sh), from the repo root on the device
# machine: strict pipes, unbuffered Python, `left` (seconds left of a DEADLINE, default 585 s), the
# carried wheels (.whl) installed to /tmp/site and put on PYTHONPATH with src/, D = the carried MNIST.
set -o pipefail
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( ${DEADLINE:-585} - ($(date +%s) - T0) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site
D=$PWD/.gpu/mnist
gpu_banner() {
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import sys, torch, koopmanlens, pydantic, ripser, plotly; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(), koopmanlens.__file__)'
}
