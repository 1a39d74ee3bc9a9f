#!/usr/bin/env bash
# The main job: set up if needed, then `cxrlib run` (cxrlib/pipeline.py): make the data if missing, execute
# every notebook headless with papermill beside the models that need no other model, and write executed
# notebooks, figures, metrics and the report under results/<profile>/. Runs on bash 3.2 (macOS's).
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
  --results   output folder (default results/<profile>; results/<profile>-<name of DIR> with --data-dir DIR)
  --artifacts trained models, reused by later runs (default ./artifacts)
  --max-steps a dry run: the profile's models and sizes, every training and evaluation loop capped at
              N steps (batches capped at 4), e.g. --profile paper --data-dir DIR --max-steps 2 proves
              the paper path runs before days of GPU time are spent; its results say nothing
USAGE
}

profile=cpu; data_dir=""; seed=42; results=""; artifacts="$PWD/artifacts"; max_steps=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --data-dir) data_dir="$(cd "$2" && pwd)"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --artifacts) mkdir -p "$2"; artifacts="$(cd "$2" && pwd)"; shift 2 ;;
    --max-steps) max_steps="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$profile" in smoke|cpu|paper) ;; *) echo "run_all.sh: unknown profile '$profile'" >&2; exit 2 ;; esac

source scripts/setup.sh

exec cxrlib run --profile "$profile" ${data_dir:+--data-dir "$data_dir"} --seed "$seed" \
  ${results:+--results "$results"} --artifacts "$artifacts" ${max_steps:+--max-steps "$max_steps"}
