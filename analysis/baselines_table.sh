#!/bin/bash
# The baselines table of docs/baselines.md as one re-runnable job: every algorithm of the algorithm
# table on Digits_even and FashionMNIST_clothes_cpu, from scratch (main.py) and fine-tuned (main-ft.py,
# from the Unsupervised seed-0 main.py model of the same config), seeds 0, 1 and 2, with NegGrad's
# weight sweep on Digits_even. Every checkpoint, fine-tuned ones too (whose own sampler is DDIM in 50
# steps), is judged with DDPM in 1,000 steps, the paper's sampler for models trained from scratch.
#
#   JOBS=2 bash analysis/baselines_table.sh OUT DATA_DIR [CONFIG ...]
#
# OUT receives checkpoints/, outputs/ and logs/ (each command's output appended to its log); it should
# hold this table's runs only, since every finished run of a config under it is evaluated. DATA_DIR
# holds FashionMNIST/ (datasets/README.md). CONFIG picks configs (default: both, the digits first).
# JOBS commands run side by side, each on THREADS torch threads (defaults 2 and 1: one job per core of
# a 2-core CPU; on a GPU, whose small-UNet steps are bound by kernel launches, several jobs share it).
# Re-run the same command after an interruption: finished runs and existing results are skipped,
# interrupted runs resume from their training states. RESULTS_TO, if set, receives a copy of every
# result and run record after each phase, so that a job that is stopped still leaves what it finished.
# Exit status 1 if any command failed (each failure is named on stderr with its log), 2 on bad input.
#
# The fine-tuning schedule is 18% of the pretraining's epochs (Fashion-MNIST: 11 of 60, the fine-tuning
# experiment of docs/own-data.md; the digits: 18 of 100) at the config's learning rate. Evaluation
# draws the config's num_eval_samples (the digits 400, Fashion-MNIST 1,000); FT_EVAL_SAMPLES sets the
# fine-tuned runs' count (docs/own-data.md's CPU measurements used 250). TRAIN_ARGS and EVAL_ARGS are
# added to every training and evaluation command; TAGS names the key tags TRAIN_ARGS add, so that the
# fine-tuning finds its pretrained model. A dry run, in an OUT of its own:
#   SEEDS=0 TRAIN_ARGS="--num_epochs 1 --num_inference_steps 10" TAGS=_ep1_steps10 \
#   EVAL_ARGS="--num_eval_samples 8 --num_inference_steps 20" bash analysis/baselines_table.sh /tmp/dry DIR Digits_even
set -u
usage() { echo "error: $1; usage: JOBS=2 bash analysis/baselines_table.sh OUT DATA_DIR [CONFIG ...]" >&2; exit 2; }
[ $# -ge 2 ] || usage "OUT and DATA_DIR are required"
out=$1 data=$2
shift 2
declare -A FT_EPOCHS=([Digits_even]=18 [FashionMNIST_clothes_cpu]=11)
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(Digits_even FashionMNIST_clothes_cpu)
for config in "${configs[@]}"; do
  [ -n "${FT_EPOCHS[$config]:-}" ] || usage "unknown config $config; this table has ${!FT_EPOCHS[*]}"
done
jobs=${JOBS:-2}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || usage "JOBS must be a positive number, not '$jobs'"
SEEDS=(${SEEDS:-0 1 2})
[[ " ${SEEDS[*]} " == *" 0 "* ]] || usage "SEEDS must hold 0, the seed of the model that is fine-tuned"
export OMP_NUM_THREADS=${THREADS:-1} PYTHONUNBUFFERED=1
mkdir -p "$out/logs" || exit 2

ALGORITHMS=(Unsupervised Supervised PU Filter Clean NegGrad)
SWEEP_WEIGHTS=(0.01 0.03 0.3 1)     # NegGrad's weight sweep besides the default 0.1 (digits only)
STATE="--checkpointing_steps 500 --checkpoints_total_limit 1 --resume_from_checkpoint latest"
q_out=$(printf %q "$out") q_data=$(printf %q "$data")
list=$(mktemp)
trap 'rm -f "$list"' EXIT
export out
status=0

run_all() {    # run_all: the lines of $list ("NAME COMMAND") run $jobs at a time, each appended to logs/NAME.log
  xargs -P "$jobs" -d '\n' -n 1 bash -c 'log="$out/logs/${0%% *}.log"
    eval "${0#* }" >> "$log" 2>&1 || { rc=$?; echo "failed ($rc): ${0#* } (log: $log)" >&2; exit 1; }' < "$list" \
    || status=1
  if [ -n "${RESULTS_TO:-}" ]; then
    mkdir -p "$RESULTS_TO"
    cp "$out"/outputs/results/*.json "$RESULTS_TO"/ 2>/dev/null
    for c in "$out"/checkpoints/main*/run_config.json; do
      [ -f "$c" ] && cp "$c" "$RESULTS_TO/$(basename "$(dirname "$c")").run_config.json"
    done
  fi
}

train_line() {   # train_line LOG_NAME SCRIPT ARGS...: one training command of $config, without evaluation
  local name=$1 script=$2
  shift 2
  echo "$name python $script --config_name $config $* --data_dir $q_data --output_dir $q_out --num_eval_samples 0 $STATE ${TRAIN_ARGS:-}"
}

judged() {   # judged KEY: a result of KEY sampled with DDPM in 1,000 steps exists
  local f
  for f in "$out/outputs/results/$1.json" "$out/outputs/results/$1_ddpm_steps1000.json"; do
    [ -f "$f" ] && python -c "import json, sys; r = json.load(open(sys.argv[1]))
sys.exit(not (r['sampler'] == 'ddpm' and r['num_inference_steps'] == 1000))" "$f" && return 0
  done
  return 1
}

for config in "${configs[@]}"; do
  for seed in "${SEEDS[@]}"; do
    for algorithm in "${ALGORITHMS[@]}"; do
      train_line "main_${config}_${algorithm}_$seed" main.py --algorithm $algorithm --seed $seed
    done
    if [ "$config" = Digits_even ]; then
      for w in "${SWEEP_WEIGHTS[@]}"; do
        train_line "main_${config}_NegGrad_w${w}_$seed" main.py --algorithm NegGrad --neggrad_weight $w --seed $seed
      done
    fi
  done > "$list"
  echo "$config: training from scratch ($(wc -l < "$list") runs)"
  run_all

  pretrained=$out/checkpoints/main_${config}_Unsupervised_0.0${TAGS:-}_0
  if [ ! -f "$pretrained/run_config.json" ]; then
    echo "$config: $pretrained, the model to fine-tune, did not finish; see its log in $out/logs" >&2
    status=1
    continue
  fi
  epochs=${FT_EPOCHS[$config]}
  for seed in "${SEEDS[@]}"; do
    for algorithm in "${ALGORITHMS[@]}"; do
      train_line "main_ft_${config}_${algorithm}_$seed" main-ft.py --pretrained_model "$(printf %q "$pretrained")" \
        --algorithm $algorithm --seed $seed --num_epochs $epochs
    done
  done > "$list"
  echo "$config: fine-tuning ($(wc -l < "$list") runs)"
  run_all

  for run in "$out"/checkpoints/main_{,ft_}"${config}"_*; do
    [ -f "$run/run_config.json" ] || continue       # a training state (.state/) or an unfinished run
    key=$(basename "$run")
    judged "$key" && continue
    samples=""
    [[ $key == main_ft_* ]] && samples=${FT_EVAL_SAMPLES:+--num_eval_samples $FT_EVAL_SAMPLES}
    echo "eval_$key python evaluate.py $(printf %q "$run") --sampler ddpm --num_inference_steps 1000 --data_dir $q_data $samples ${EVAL_ARGS:-}"
  done > "$list"
  echo "$config: evaluation ($(wc -l < "$list") checkpoints not judged yet)"
  run_all
done
python report.py "$out/outputs/results" || status=1
exit $status
