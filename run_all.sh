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

# Jobs side by side, each with half the cores: the profile's small networks keep one core busier than
# two (on 2 cores the latent U-Net trains 1.7x faster as two 1-thread processes than as one of 2
# threads), so models that need no other model train beside the notebooks (cxrlib train), and every
# job starts as soon as the jobs it needs are done.
cores="$(nproc)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cores > 1 ? cores / 2 : 1 ))}"
logs="$results/logs"
timings="$results/timings.tsv"
rm -rf "$logs"; mkdir -p "$logs"

train=(cxrlib train --profile "$profile" ${data_dir:+--data-dir "$data_dir"} --seed "$seed" --artifacts "$artifacts")
declare -A needs=(  # job -> the jobs whose models or results it reads
  ["train classifier"]=""
  ["train ldm"]=""
  [00_data.ipynb]=""
  [01_reidentification.ipynb]=""
  [02_prichexy_net.ipynb]="01_reidentification.ipynb|train classifier"
  [03_baselines_and_tradeoff.ipynb]="02_prichexy_net.ipynb"
  [04_ldm_synthesis.ipynb]="01_reidentification.ipynb|train classifier|train ldm"
  [05_publishing_a_release.ipynb]="02_prichexy_net.ipynb"
)
# The longest chain of jobs keeps its priority and every other job runs at nice 10, so that the chain's
# single-thread process has a core to itself while the others share the rest. Where the kernel groups
# processes by session for scheduling (autogroup, /proc/sys/kernel/sched_autogroup_enabled), nice orders
# only the processes of one session: papermill's notebook kernels start sessions of their own
# (jupyter_client), so each notebook gets a fair share of the cores against this script's session, and
# nice orders the `cxrlib train` jobs inside it. In the cpu run of ebf5097 the classifier's epochs took
# 62 s beside the latent diffusion model's training while notebook 01 ran, and 4.5 s after. In the cpu run of c7fe680
# the chain (the latent diffusion model, 1,328 s, then notebook 04, 439 s) took 1,767 of the run's 1,773 s,
# sharing the cores with up to five other processes, and notebook 04 ran its last 7 minutes alone on one
# core while the other idled. Threads stay as they are (results do not depend on priorities): a job of
# several threads must not share its cores with another, since an OpenMP team with one thread descheduled
# waits at every barrier (measured: the U-Net's bf16 sampling on 2 threads 7x slower beside one
# single-thread training).
critical=("train ldm" 04_ldm_synthesis.ipynb)
for notebook in notebooks/[0-9][0-9]_*.ipynb; do
  if [ -z "${needs[$(basename "$notebook")]+set}" ]; then
    echo "run_all.sh: $notebook is not in the schedule (needs=...); add it" >&2; exit 2
  fi
done
for job in "${critical[@]}"; do
  if [ -z "${needs[$job]+set}" ]; then echo "run_all.sh: critical job '$job' is not in the schedule" >&2; exit 2; fi
done

run_job() {  # run_job NAME: the job's command, its output in $logs/NAME.log, its seconds in $logs/NAME.seconds,
  # and bash's `times` of the job in $logs/NAME.times (this subshell starts with none: its children's CPU
  # time is the job's, counting every process of it that was waited for: kernels, workers)
  local name="$1" began=$SECONDS status=0 niceness=10 job
  for job in "${critical[@]}"; do [ "$job" != "$name" ] || niceness=0; done
  case "$name" in
    train\ *) nice -n "$niceness" "${train[@]}" "${name#train }" ;;
    *) nice -n "$niceness" papermill "notebooks/$name" "$results/notebooks/$name" --kernel cxrlib --cwd notebooks \
         --progress-bar -p profile "$profile" -p data_dir "$data_dir" -p seed "$seed" -p results_dir "$results" \
         -p artifacts_dir "$artifacts" ;;
  esac > "$logs/$name.log" 2>&1 || status=$?
  echo $(( SECONDS - began )) > "$logs/$name.seconds"
  times > "$logs/$name.times"
  return $status
}
cpu_seconds() {  # cpu_seconds NAME: the job's user + system CPU seconds, from the children's line of `times`
  awk 'NR == 2 { for (i = 1; i <= NF; i++) { gsub(",", ".", $i); split($i, t, "m"); s += t[1] * 60 + t[2] }
                 printf "%d", s + 0.5 }' "$logs/$1.times"
}

set -m  # each job its own process group, so that a failure stops a job's kernel and workers too
declare -A running=() started=() completed=()  # running: pid -> job; started, completed: job -> 1
stop_jobs() { for pid in "${!running[@]}"; do kill -- "-$pid" 2>/dev/null || true; done; }
trap 'stop_jobs; exit 130' INT TERM
needed() {  # needed NAME: the jobs NAME needs, one per line
  local -a list; IFS='|' read -r -a list <<< "${needs[$1]}"; printf '%s\n' "${list[@]}"
}
ready() {  # ready NAME: NAME has not started, and every job it needs is done
  local need
  [ -z "${started[$1]+set}" ] || return 1
  while read -r need; do [ -z "$need" ] || [ -n "${completed[$need]+set}" ] || return 1; done < <(needed "$1")
}
start_all=$SECONDS
: > "$logs/job_seconds.tsv"
while [ ${#completed[@]} -lt ${#needs[@]} ]; do
  for name in "${!needs[@]}"; do
    if ready "$name"; then
      echo "== $name: started ($(date +%H:%M:%S))"
      run_job "$name" &
      running[$!]="$name"; started[$name]=1
    fi
  done
  if [ ${#running[@]} -eq 0 ]; then
    echo "run_all.sh: no job can start; the schedule (needs=...) names a job that is not in it, or a cycle" >&2
    exit 2
  fi
  status=0; wait -n -p pid "${!running[@]}" || status=$?
  name="${running[$pid]}"; unset "running[$pid]"
  if [ $status -ne 0 ]; then
    echo "run_all.sh: $name FAILED; its output: $logs/$name.log" >&2
    if [[ "$name" == *.ipynb ]]; then echo "run_all.sh: the executed copy with the error: $results/notebooks/$name" >&2; fi
    stop_jobs; exit 1
  fi
  completed[$name]=1
  printf "%s\tall\t%d\t%d\n" "$name" "$(cat "$logs/$name.seconds")" "$(cpu_seconds "$name")" >> "$logs/job_seconds.tsv"
  echo "== $name: done in $(cat "$logs/$name.seconds") s"
done
# per notebook one row per section (cxrlib timings, from papermill's cell times; no CPU time of their own);
# then each job's wall time and CPU time. The jobs' CPU seconds over the cores bound any schedule's total.
printf "notebook\tstage\tseconds\tcpu_seconds\n" > "$timings"
cxrlib timings "$results"/notebooks/[0-9][0-9]_*.ipynb | sed 's/$/\t/' >> "$timings"
cat "$logs/job_seconds.tsv" >> "$timings"
printf "total\tall\t%d\t%d\n" $((SECONDS - start_all)) "$(awk -F '\t' '{ s += $4 } END { print s }' "$logs/job_seconds.tsv")" >> "$timings"
cxrlib report --profile "$profile" --results "$results"
echo "== done: figures, metrics and executed notebooks in $results (timings in $timings)"
