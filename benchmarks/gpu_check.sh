#!/bin/bash
# The GPU checks as one job (at most 9 min 30 s of steps, each with its own limit; docs/speed.md):
#   0. the suite's GPU-only tests (tests/test_gpu.py: fp16 training with the grad scaler, data on the
#      GPU, --eval_batch_size auto), which skip on a machine without CUDA;
#   1. benchmarks/throughput.py on MNIST_even (the paper's UNet, batch 128, 50 steps): the default
#      fp16, bf16 with channels_last, and --compile; each against the naive torchvision path;
#   2. a short main.py run on the digits on the GPU: fp16 autocast with the grad scaler, fused AdamW,
#      the non-finite guard, training states, the --eval_batch_size auto search, the evaluation.
# Each step has its own time limit, so a slow one cannot starve the rest. Output goes to $OUT (if
# set) or ./gpu_check: one JSON per benchmark, log.txt, main.log, gpu.txt.
#
# On a GPU machine with torch but without network, diffusers or torch-fidelity, fetch their wheels
# on a machine with network first,
#   pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 torch-fidelity==0.4.0
# copy .whl/ into the repository on the GPU machine (the script installs them), and run
#   bash benchmarks/gpu_check.sh
# Extra arguments go to every benchmark call; a dry run on a CPU, to check the script itself:
#   bash benchmarks/gpu_check.sh --device cpu --unet digits --steps 1 --batch_size 8
set -u
out=${OUT:-gpu_check}
mkdir -p "$out"
run=$(mktemp -d)     # main.py's checkpoints stay out of $OUT, which returns only a few files
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
  nproc; } > "$out/gpu.txt" 2>&1

bench() {   # bench NAME LIMIT_S ARGS...: one benchmark, its JSON to $out/NAME.json
  local name=$1 limit=$2
  shift 2
  timeout "$limit" python3 benchmarks/throughput.py --config_name MNIST_even --steps 50 "$@" \
    > "$out/$name.json" 2>> "$out/log.txt"
  echo "$name: exit $?" | tee -a "$out/log.txt"
}
timeout 60 python3 -m pytest -m gpu -p no:cacheprovider -q tests/test_gpu.py > "$out/pytest.log" 2>&1
echo "pytest -m gpu: exit $?" | tee -a "$out/log.txt"

bench fp16 80 --repeats 2 "$@"
bench bf16_channels_last 80 --repeats 2 --mixed_precision bf16 --channels_last "$@"
bench compile 200 --repeats 1 --compile "$@"

timeout 150 python3 main.py --config_name Digits_even --algorithm PU --seed 0 --num_epochs 5 \
  --checkpointing_steps 50 --checkpoints_total_limit 1 --output_dir "$run" > "$out/main.log" 2>&1
echo "main.py: exit $?" | tee -a "$out/log.txt"
cp "$run"/outputs/results/*.json "$out/" 2>/dev/null
rm -rf "$run"
