#!/usr/bin/env bash
# The main job: set up if needed, make the data if missing, execute every notebook headless with
# papermill, and write executed notebooks, figures and metrics under results/<profile>/.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<USAGE
usage: ./run_all.sh [--profile smoke|cpu|paper] [--data-dir CHESTXRAY14_DIR] [--seed N] [--results DIR]
                   [--artifacts DIR] [--max-steps N]
  --profile   what to run (default cpu: the phantom; results/cpu/timings.tsv holds the last run's times;
              paper needs a GPU)
  --data-dir  a ChestX-ray14 folder (default: the profile's phantom, generated on first use)
  --seed      training and sampling seed (default 42)
  --results   output folder (default results/<profile>)
  --artifacts trained models, reused by later runs (default ./artifacts)
  --max-steps a dry run: the profile's models and sizes, every training and evaluation loop capped at
              N steps (batches capped at 4), e.g. --profile paper --data-dir DIR --max-steps 2 proves
              the paper path runs before days of GPU time are spent; its results say nothing
USAGE
}

profile=cpu; data_dir=""; seed=42; results=""; artifacts="$PWD/artifacts"
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --data-dir) data_dir="$(cd "$2" && pwd)"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --artifacts) mkdir -p "$2"; artifacts="$(cd "$2" && pwd)"; shift 2 ;;
    --max-steps) export CXRLIB_MAX_STEPS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$profile" in smoke|cpu|paper) ;; *) echo "run_all.sh: unknown profile '$profile'" >&2; exit 2 ;; esac
results="${results:-results/$profile${CXRLIB_MAX_STEPS:+-dry-run}}"
mkdir -p "$results/notebooks"
results="$(cd "$results" && pwd)"

source scripts/setup.sh

echo "== data ($profile)"
cxrlib data --profile "$profile" ${data_dir:+--data-dir "$data_dir"}

# Two jobs side by side, each with half the cores: the profile's small networks keep one core busier
# than two (on 2 cores the latent U-Net trains 1.7x faster as two 1-thread processes than as one of
# 2 threads), so models that need no other model train beside the notebooks, and notebooks that do
# not depend on each other run together. Order: the classifier and the latent diffusion model
# (cxrlib train) beside 00 and 01; 02 once the classifier is there; then 03 beside 04 (which waits
# for the latent diffusion model), and 05 after 03.
cores="$(nproc)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cores > 1 ? cores / 2 : 1 ))}"
logs="$results/logs"
timings="$results/timings.tsv"
rm -rf "$logs"; mkdir -p "$logs"
set -m  # each job its own process group, so that a failure stops a job's kernel and workers too
declare -A job_pid job_start
stop_jobs() { for pid in "${job_pid[@]}"; do kill -- "-$pid" 2>/dev/null || true; done; }
trap 'stop_jobs; exit 130' INT TERM

notebook_command() {
  papermill "notebooks/$1" "$results/notebooks/$1" --kernel cxrlib --cwd notebooks --progress-bar \
    -p profile "$profile" -p data_dir "$data_dir" -p seed "$seed" -p results_dir "$results" \
    -p artifacts_dir "$artifacts"
}

start() {  # start NAME COMMAND...: run COMMAND in the background, its output in $logs/NAME.log
  local name="$1"; shift
  echo "== $name: started ($(date +%H:%M:%S))"
  job_start[$name]=$SECONDS
  "$@" > "$logs/$name.log" 2>&1 &
  job_pid[$name]=$!
}

finish() {  # finish NAME: wait for job NAME; on failure stop the others and say where to look
  local name="$1"
  if ! wait "${job_pid[$name]}"; then
    echo "run_all.sh: $name FAILED; its output: $logs/$name.log" >&2
    if [[ "$name" == *.ipynb ]]; then echo "run_all.sh: the executed copy with the error: $results/notebooks/$name" >&2; fi
    unset "job_pid[$name]"; stop_jobs; exit 1
  fi
  unset "job_pid[$name]"
  local seconds=$(( SECONDS - job_start[$name] ))
  printf "%s\tall\t%d\n" "$name" "$seconds" >> "$logs/job_seconds.tsv"
  echo "== $name: done in ${seconds} s"
}

scheduled=" 00_data.ipynb 01_reidentification.ipynb 02_prichexy_net.ipynb 03_baselines_and_tradeoff.ipynb 04_ldm_synthesis.ipynb 05_publishing_a_release.ipynb "
for notebook in notebooks/[0-9][0-9]_*.ipynb; do
  if [[ "$scheduled" != *" $(basename "$notebook") "* ]]; then
    echo "run_all.sh: $notebook is not in the schedule below; add it" >&2; exit 2
  fi
done
train=(cxrlib train --profile "$profile" ${data_dir:+--data-dir "$data_dir"} --seed "$seed" --artifacts "$artifacts")
start_all=$SECONDS
start "train classifier" "${train[@]}" classifier
start "train ldm" "${train[@]}" ldm
for name in 00_data.ipynb 01_reidentification.ipynb; do start "$name" notebook_command "$name"; finish "$name"; done
finish "train classifier"
start 02_prichexy_net.ipynb notebook_command 02_prichexy_net.ipynb; finish 02_prichexy_net.ipynb
start 03_baselines_and_tradeoff.ipynb notebook_command 03_baselines_and_tradeoff.ipynb
finish "train ldm"
start 04_ldm_synthesis.ipynb notebook_command 04_ldm_synthesis.ipynb
finish 03_baselines_and_tradeoff.ipynb
start 05_publishing_a_release.ipynb notebook_command 05_publishing_a_release.ipynb
finish 04_ldm_synthesis.ipynb
finish 05_publishing_a_release.ipynb
# per notebook one row per section (cxrlib timings, from papermill's cell times); then each job's wall time
printf "notebook\tstage\tseconds\n" > "$timings"
cxrlib timings "$results"/notebooks/[0-9][0-9]_*.ipynb >> "$timings"
cat "$logs/job_seconds.tsv" >> "$timings"
printf "total\tall\t%d\n" $((SECONDS - start_all)) >> "$timings"
cxrlib report --profile "$profile" --results "$results"
echo "== done: figures, metrics and executed notebooks in $results (timings in $timings)"
