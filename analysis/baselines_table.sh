#!/bin/bash
# The baselines table of docs/baselines.md as one re-runnable job: every algorithm of the algorithm
# table on Digits_even and FashionMNIST_clothes_cpu, from scratch (main.py) and fine-tuned (main-ft.py,
# from the Unsupervised seed-0 main.py model of the same config), seeds 0, 1 and 2, with NegGrad's
# weight sweep on Digits_even; every checkpoint judged with the paper's sampler, DDPM in 1,000 steps.
#
#   JOBS=2 bash analysis/baselines_table.sh OUT DATA_DIR [CONFIG ...]
#
# OUT receives checkpoints/, outputs/ and logs/ (one log per command); DATA_DIR holds FashionMNIST/
# (datasets/README.md). CONFIG picks configs (default: both, the digits first). JOBS commands run side
# by side, each on THREADS torch threads (defaults 2 and 1: one job per core of a 2-core CPU; on a GPU,
# whose small-UNet steps are bound by kernel launches, 8 jobs share it well). Re-run the same command
# after an interruption: finished runs and existing results are skipped, interrupted runs resume from
# their training states. RESULTS_TO, if set, receives a copy of every result and run record after each
# phase, so that a job that is stopped still leaves what it finished.
#
# The fine-tuning schedule is 18% of the pretraining's epochs (Fashion-MNIST: 11 of 60, the fine-tuning
# experiment of docs/own-data.md; the digits: 18 of 100) at the config's learning rate. Evaluation
# draws the config's num_eval_samples (the digits 400, Fashion-MNIST 1,000); FT_EVAL_SAMPLES sets the
# fine-tuned runs' count (docs/own-data.md's CPU measurements used 250). TRAIN_ARGS and EVAL_ARGS are
# added to every training and evaluation command (a dry run: TRAIN_ARGS="--num_epochs 1"
# EVAL_ARGS="--num_eval_samples 8" SEEDS=0).
set -u
if [ $# -lt 2 ]; then
  echo "usage: JOBS=2 bash analysis/baselines_table.sh OUT DATA_DIR [CONFIG ...]" >&2
  exit 2
fi
out=$1 data=$2
shift 2
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(Digits_even FashionMNIST_clothes_cpu)
jobs=${JOBS:-2}
export OMP_NUM_THREADS=${THREADS:-1} PYTHONUNBUFFERED=1
mkdir -p "$out/logs"

ALGORITHMS=(Unsupervised Supervised PU Filter Clean NegGrad)
SEEDS=(${SEEDS:-0 1 2})
SWEEP_WEIGHTS=(0.01 0.03 0.3 1)     # NegGrad's weight sweep besides the default 0.1 (digits only)
declare -A FT_EPOCHS=([Digits_even]=18 [FashionMNIST_clothes_cpu]=11)
STATE="--checkpointing_steps 500 --checkpoints_total_limit 1 --resume_from_checkpoint latest"

run_all() {    # run_all FILE: its lines ("NAME COMMAND") run $jobs at a time, each logged to logs/NAME.log
  local failed
  xargs -P "$jobs" -d '\n' -n 1 bash -c 'log="$out/logs/${0%% *}.log"; eval "${0#* }" > "$log" 2>&1 || echo "failed ($?): ${0#* } (log: $log)"' < "$1"
  failed=$?
  if [ -n "${RESULTS_TO:-}" ]; then
    mkdir -p "$RESULTS_TO"
    cp "$out"/outputs/results/*.json "$RESULTS_TO"/ 2>/dev/null
    for c in "$out"/checkpoints/main*/run_config.json; do
      [ -f "$c" ] && cp "$c" "$RESULTS_TO/$(basename "$(dirname "$c")").run_config.json"
    done
  fi
  return $failed
}

judged() {   # judged KEY: a result of KEY sampled with DDPM in 1,000 steps exists
  local f
  for f in "$out/outputs/results/$1.json" "$out/outputs/results/$1_ddpm_steps1000.json"; do
    [ -f "$f" ] && python -c "import json, sys; r = json.load(open(sys.argv[1]))
sys.exit(not (r['sampler'] == 'ddpm' and r['num_inference_steps'] == 1000))" "$f" && return 0
  done
  return 1
}
export -f judged
export out

evaluate_line() {   # evaluate_line KEY [evaluate.py options]: judge a checkpoint once, with DDPM-1000
  local key=$1
  shift
  echo "eval_$key judged $key || python evaluate.py $out/checkpoints/$key --sampler ddpm --num_inference_steps 1000 --data_dir $data $* ${EVAL_ARGS:-}"
}

for config in "${configs[@]}"; do
  list=$(mktemp)
  for seed in "${SEEDS[@]}"; do
    for algorithm in "${ALGORITHMS[@]}"; do
      echo "main_${config}_${algorithm}_$seed python main.py --config_name $config --algorithm $algorithm --seed $seed --data_dir $data --output_dir $out --num_eval_samples 0 $STATE ${TRAIN_ARGS:-}"
    done
    if [ "$config" = Digits_even ]; then
      for w in "${SWEEP_WEIGHTS[@]}"; do
        echo "main_${config}_NegGrad_w${w}_$seed python main.py --config_name $config --algorithm NegGrad --neggrad_weight $w --seed $seed --data_dir $data --output_dir $out --num_eval_samples 0 $STATE ${TRAIN_ARGS:-}"
      done
    fi
  done > "$list"
  echo "$config: training from scratch ($(wc -l < "$list") runs)"
  run_all "$list"

  pretrained=$(ls -d "$out"/checkpoints/main_"${config}"_Unsupervised_0.0*_0 2>/dev/null | grep -v '\.state$' | head -1)
  if [ ! -f "$pretrained/run_config.json" ]; then
    echo "$config: no finished Unsupervised seed-0 model under $out/checkpoints to fine-tune; see the logs above" >&2
    exit 1
  fi
  epochs=${FT_EPOCHS[$config]}
  for seed in "${SEEDS[@]}"; do
    for algorithm in "${ALGORITHMS[@]}"; do
      echo "main_ft_${config}_${algorithm}_$seed python main-ft.py --config_name $config --pretrained_model $pretrained --algorithm $algorithm --seed $seed --num_epochs $epochs --data_dir $data --output_dir $out --num_eval_samples 0 $STATE ${TRAIN_ARGS:-}"
    done
  done > "$list"
  echo "$config: fine-tuning ($(wc -l < "$list") runs)"
  run_all "$list"

  for run in "$out"/checkpoints/main_{,ft_}"${config}"_*; do
    [ -f "$run/run_config.json" ] || continue       # a training state (.state/) or an unfinished run
    key=$(basename "$run")
    case $key in main_ft_*) evaluate_line "$key" ${FT_EVAL_SAMPLES:+--num_eval_samples $FT_EVAL_SAMPLES} ;;
                 *) evaluate_line "$key" ;; esac
  done > "$list"
  echo "$config: evaluation ($(wc -l < "$list") checkpoints)"
  run_all "$list"
  rm -f "$list"
done
python report.py "$out/outputs/results"
