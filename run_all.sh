#!/usr/bin/env bash
# The main job: set up if needed, make the data if missing, execute every notebook headless with
# papermill, and write executed notebooks, figures and metrics under results/<profile>/.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<USAGE
usage: ./run_all.sh [--profile smoke|cpu|paper] [--data-dir CHESTXRAY14_DIR] [--seed N] [--results DIR]
                   [--max-steps N]
  --profile   what to run (default cpu: the phantom; results/cpu/timings.tsv holds the last run's times;
              paper needs a GPU)
  --data-dir  a ChestX-ray14 folder (default: the profile's phantom, generated on first use)
  --seed      training and sampling seed (default 42)
  --results   output folder (default results/<profile>)
  --max-steps a dry run: the profile's models and sizes, every training and evaluation loop capped at
              N steps (batches capped at 4), e.g. --profile paper --data-dir DIR --max-steps 2 proves
              the paper path runs before days of GPU time are spent; its results say nothing
USAGE
}

profile=cpu; data_dir=""; seed=42; results=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --data-dir) data_dir="$(cd "$2" && pwd)"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
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

timings="$results/timings.tsv"
# per notebook: one row per section (cxrlib timings, from papermill's cell times), then the whole notebook
printf "notebook\tstage\tseconds\n" > "$timings"
start_all=$SECONDS
for notebook in notebooks/[0-9][0-9]_*.ipynb; do
  name="$(basename "$notebook")"
  echo "== $name"
  start=$SECONDS
  if ! papermill "$notebook" "$results/notebooks/$name" --kernel cxrlib --cwd notebooks \
        --progress-bar -p profile "$profile" -p data_dir "$data_dir" -p seed "$seed" \
        -p results_dir "$results" -p artifacts_dir "$PWD/artifacts"; then
    echo "run_all.sh: notebook $name FAILED; the executed copy with the error is $results/notebooks/$name" >&2
    exit 1
  fi
  cxrlib timings "$results/notebooks/$name" >> "$timings"
  printf "%s\tall\t%d\n" "$name" $((SECONDS - start)) >> "$timings"
done
printf "total\tall\t%d\n" $((SECONDS - start_all)) >> "$timings"
cxrlib report --profile "$profile" --results "$results"
echo "== done: figures, metrics and executed notebooks in $results (timings in $timings)"
