#!/bin/bash
# The GPU memory checks as a second job after benchmarks/gpu_check.sh (at most 6 min 30 s of steps,
# each with its own limit; exit 1 if any step failed; docs/speed.md):
#   1. benchmarks/memory.py: peak memory and step time of Stable Diffusion v1-4's UNet at 512 px,
#      batch 16, fp16 autocast with AdamW (the VAE and text encoder frozen in fp16, as main-sd.py runs
#      them), without and with --gradient_checkpointing; and of google/ddpm-celebahq-256's UNet at
#      batch 16 (main-ft.py's CelebA run). Random weights from the hub configs: nothing downloaded.
#   2. benchmarks/throughput.py on MNIST_even: sampling in the batch --eval_batch_size auto picks for
#      the evaluation (fp16), timed over 10 steps and extrapolated to 10,000 samples of 1,000 steps
#      (the JSON's sampling.evaluation).
# Output: one JSON per step in $OUT (if set) or ./gpu_memory, and log.txt.
#
# Wheels in .whl/ as for gpu_check.sh:
#   bash benchmarks/gpu_memory.sh
# A dry run on a CPU, to check the script itself (small images; the full-size models still build):
#   DRY_RUN=1 bash benchmarks/gpu_memory.sh
set -u
out=${OUT:-gpu_memory}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
scale=1
if [ -n "${DRY_RUN:-}" ]; then
  scale=3      # the CPU builds and steps the full-size models far slower than the GPU
  memory_args=(--device cpu --resolution 64 --batch_size 1 --steps 1 --warmup_steps 1)
  sampling_args=(--device cpu --unet digits --batch_size 4 --steps 1 --warmup_steps 1 --sample_steps 1
                 --sample_images 2)
else
  memory_args=(--batch_size 16 --steps 10)
  sampling_args=(--steps 5 --sample_steps 10)
fi

failed=0
step() {   # step NAME LIMIT_S SCRIPT ARGS...: one benchmark, its JSON to $out/NAME.json
  local name=$1 limit=$2 script=$3 status
  shift 3
  timeout $((limit * scale)) python3 "benchmarks/$script" "$@" > "$out/$name.json" 2>> "$out/log.txt"
  status=$?
  echo "$name: exit $status" | tee -a "$out/log.txt"
  [ "$status" -eq 0 ] || failed=1
}
step sd_512_fp16 120 memory.py --model sd-v1-4 "${memory_args[@]}"
step sd_512_fp16_checkpointing 120 memory.py --model sd-v1-4 --gradient_checkpointing "${memory_args[@]}"
step celebahq_256_fp16 60 memory.py --model ddpm-celebahq-256 "${memory_args[@]}"
step mnist_sampling_fp16 90 throughput.py --config_name MNIST_even "${sampling_args[@]}"
exit $failed
