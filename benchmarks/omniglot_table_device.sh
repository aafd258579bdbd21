#!/bin/bash
# Trains Omniglot table cells side by side on a lent GPU (the `device` tool's `run`) and brings back
# their new rows and newest checkpoints. Prepare once, here, in the repository root:
#
#   echo /.data/ >> .git/info/exclude
#   mkdir -p .data && cp -r ../shared/data/omniglot .data/      # ../shared does not travel
#
# then `run` with carry [".data"], timeout_s 600 and the command
#
#   bash benchmarks/omniglot_table_device.sh MINUTES CELL...          # CELL: algo:ways:shots, e.g. maml:5:1
#
# A cell with an archive in benchmarks/parked/ (`omniglot_table.py park`) goes on from it; any other
# starts afresh. Each cell trains until the first curve point past MINUTES of wall time (compilation
# included), with its run's curve spacing when resumed (new: 200 meta-steps, Relation's 500), then is
# tested as its paper's code tests. A cell still running LIMIT_S - 90 seconds after the script's start
# (LIMIT_S: the call's limit, default 600) is stopped at its next chunk, checkpointed, and brings back no
# row. $OUT gets the rows that changed (store them here with `omniglot_table.py merge
# omniglot_table.json --git COMMIT`), logs.tar.gz, and parked_<algo>.tar: the park archives of its
# cells, each with its newest intact checkpoint (`tar -xf parked_maml.tar -C benchmarks/parked`
# replaces the archives it holds; commit them: the next call goes on from them, and `unpark` into
# /root/metajax-runs/ goes on here). At most 6 algorithms a call ($OUT brings back 8 files). Exits
# non-zero if a cell failed or could not be parked.
set -u
: "${OUT:?set by the device tool: the folder whose files come back}"
cd "$(dirname "$0")/.."
minutes=$1; shift
cells=$(printf '%s\n' "$@" | sort -u)
export PYTHONPATH=$PWD METAJAX_DATA=$PWD/.data XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
runs=/tmp/runs logs=/tmp/logs parked=/tmp/parked table=benchmarks/results/omniglot_table.json
rm -rf $runs $logs $parked && mkdir -p $runs $logs  # a warm machine keeps /tmp from the call before
cp $table /tmp/table_before.json
failed=()
declare -A pids
wait_all() {  # waits for the processes in `pids`; a cell whose process failed joins `failed`, tagged $1
  local cell
  for cell in "${!pids[@]}"; do wait "${pids[$cell]}" || failed+=("$cell$1"); done
  pids=()
}
run_name() {  # run_name CELL: the cell's run directory and park archive name (omniglot_table._cell)
  local algo ways shots; IFS=: read -r algo ways shots <<< "$1"
  echo "vinyals_${algo}_${ways}w${shots}s"
}
on_cell() {  # on_cell SECONDS COMMAND CELL ARGS...: `omniglot_table.py COMMAND` on CELL's run in $runs, in
             # the background, interrupted after SECONDS (at least 1)
  local seconds=$(($1 > 1 ? $1 : 1)) command=$2 log algo ways shots; IFS=: read -r algo ways shots <<< "$3"
  log=$logs/$(run_name "$3").log; shift 3
  timeout -s INT $seconds python3 benchmarks/omniglot_table.py "$command" --algo "$algo" --ways "$ways" \
      --shots "$shots" --runs-dir $runs "$@" >> "$log" 2>&1 &
}
for cell in $cells; do
  [ -f "benchmarks/parked/$(run_name "$cell").tar.gz" ] || continue
  on_cell 60 unpark "$cell"; pids[$cell]=$!
done
wait_all " (unpark)"
(while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done \
  > $logs/gpu.csv 2>&1) &
sampler=$!
for cell in $cells; do
  IFS=: read -r algo ways shots <<< "$cell"
  eval_chunk=$([ "$algo" = relation ] && [ "$ways" = 20 ] && echo 4 || echo 10)
  every=()
  [ -f "$runs/$(run_name "$cell")/run.json" ] || every=(--curve-every "$([ "$algo" = relation ] && echo 500 || echo 200)")
  left=$((${LIMIT_S:-600} - 90 - SECONDS))
  on_cell $left run "$cell" --wall-minutes "$minutes" --eval-chunk "$eval_chunk" "${every[@]}"
  pids[$cell]=$!
done
wait_all " (run)"
kill $sampler
python3 - /tmp/table_before.json $table "$OUT/omniglot_table.json" <<'PY'  # the rows this call changed
import json, sys
before, after, out = (sys.argv[1:])
old = json.load(open(before))
json.dump([r for r in json.load(open(after)) if r not in old], open(out, "w"), indent=1)
PY
for cell in $cells; do
  algo=${cell%%:*}
  on_cell 60 park "$cell" --parked-dir "$parked/$algo"; pids[$cell]=$!
done
wait_all " (park)"
for dir in $parked/*/; do
  [ -d "$dir" ] || continue  # no cell parked
  (cd "$dir" && tar -cf "$OUT/parked_$(basename "$dir").tar" *.tar.gz)
done
tar -czf "$OUT/logs.tar.gz" -C /tmp logs
grep -h "test tasks after" $logs/*.log
ls -l "$OUT"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed (see their logs in logs.tar.gz): ${failed[*]}"
  exit 1
fi
