#!/bin/bash
# Trains Omniglot table cells side by side on a lent GPU (the `device` tool's `run`) and brings back
# their new rows and newest checkpoints. Prepare once, here, in the repository root:
#
#   echo /.data/ >> .git/info/exclude; echo /.runs/ >> .git/info/exclude
#   mkdir -p .data .runs && cp -r ../shared/data/omniglot .data/      # ../shared does not travel
#   python benchmarks/omniglot_table.py unpark --algo maml --ways 20 --shots 1 --runs-dir .runs   # to resume a parked cell
#
# then `run` with carry [".data", ".runs"], timeout_s 600 and the command
#
#   bash benchmarks/omniglot_table_device.sh MINUTES CELL...          # CELL: algo:ways:shots, e.g. maml:5:1
#
# Each cell trains until the first curve point past MINUTES of wall time (compilation included), with
# its run's curve spacing when resumed (new: 200 meta-steps, Relation's 500), then is tested as its
# paper's code tests. A cell still running LIMIT_S - 90 seconds after the start (LIMIT_S: the call's
# limit, default 600) is stopped at its next chunk, checkpointed, and brings back no row. $OUT gets the
# rows that changed (store them here with `omniglot_table.py merge omniglot_table.json --git COMMIT`),
# logs.tar.gz, and parked_<algo>.tar: the `omniglot_table.py park` archives of its cells, each with its
# newest intact checkpoint (`tar -xf parked_maml.tar -C benchmarks/parked`, commit them, and `unpark` a
# cell into .runs/ to resume it in the next call, or into /root/metajax-runs/ to go on here). At most 6
# algorithms a call ($OUT brings back 8 files). Exits non-zero if a cell failed or could not be parked.
set -u
: "${OUT:?set by the device tool: the folder whose files come back}"
cd "$(dirname "$0")/.."
minutes=$1; shift
cells=$(printf '%s\n' "$@" | sort -u)
export PYTHONPATH=$PWD METAJAX_DATA=$PWD/.data XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
runs=/tmp/runs logs=/tmp/logs table=benchmarks/results/omniglot_table.json
rm -rf $runs $logs && mkdir -p $runs $logs  # a warm machine keeps /tmp from the call before
[ -d .runs ] && cp -r .runs/. $runs/
cp $table /tmp/table_before.json
(while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done \
  > $logs/gpu.csv 2>&1) &
sampler=$!
declare -A pids
for cell in $cells; do
  IFS=: read -r algo ways shots <<< "$cell"
  eval_chunk=$([ "$algo" = relation ] && [ "$ways" = 20 ] && echo 4 || echo 10)
  every=()
  [ -f "$runs/vinyals_${algo}_${ways}w${shots}s/run.json" ] || every=(--curve-every "$([ "$algo" = relation ] && echo 500 || echo 200)")
  timeout -s INT $((${LIMIT_S:-600} - 90)) python3 benchmarks/omniglot_table.py run --algo "$algo" --ways "$ways" \
      --shots "$shots" --runs-dir $runs --wall-minutes "$minutes" --eval-chunk "$eval_chunk" "${every[@]}" \
      > "$logs/${algo}_${ways}w${shots}s.log" 2>&1 &
  pids[$cell]=$!
done
failed=()
for cell in $cells; do wait "${pids[$cell]}" || failed+=("$cell"); done
kill $sampler
python3 - /tmp/table_before.json $table "$OUT/omniglot_table.json" <<'PY'  # the rows this call changed
import json, sys
before, after, out = (sys.argv[1:])
old = json.load(open(before))
json.dump([r for r in json.load(open(after)) if r not in old], open(out, "w"), indent=1)
PY
parked=/tmp/parked && rm -rf $parked
for cell in $cells; do
  IFS=: read -r algo ways shots <<< "$cell"
  python3 benchmarks/omniglot_table.py park --algo "$algo" --ways "$ways" --shots "$shots" --runs-dir $runs \
      --parked-dir "$parked/$algo" >> $logs/park.log 2>&1 || failed+=("$cell (not parked)")
done
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
