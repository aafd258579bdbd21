#!/bin/bash
# Trains Omniglot table cells side by side on a lent GPU (the `device` tool's `run`) and brings back
# their rows and newest checkpoints. Prepare once, here, in the repository root:
#
#   echo /.data/ >> .git/info/exclude; echo /.runs/ >> .git/info/exclude
#   mkdir -p .data .runs && cp -r ../shared/data/omniglot .data/      # ../shared does not travel
#   tar -xf runs_maml.tar -C .runs                                     # runs brought back before, to resume
#
# then `run` with carry [".data", ".runs"] and the command
#
#   bash benchmarks/omniglot_table_device.sh MINUTES CELL...          # CELL: algo:ways:shots, e.g. maml:5:1
#
# Each cell trains MINUTES more than its run directory has (--budget-minutes counts all sessions), with
# its curve every --curve-every of the run (200 meta-steps when new; Relation's 500), and is tested as its
# paper's code tests. $OUT gets these cells' table rows (store them here with `omniglot_table.py merge
# omniglot_table.json --git COMMIT`), logs.tar.gz, and runs_<algo>.tar: each cell's run directory with
# only its newest checkpoint (unpack into the runs directory to resume). Keep MINUTES + 3 inside the
# call's limit: start-up, compilation and the 600-task tests come on top.
set -u
minutes=$1; shift
export PYTHONPATH=$PWD METAJAX_DATA=$PWD/.data XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
runs=/tmp/runs logs=/tmp/logs
mkdir -p $runs $logs
[ -d .runs ] && cp -r .runs/. $runs/
resumed() {  # resumed DIR DEFAULT_EVERY: "<training minutes so far> <its curve's meta-steps>"
  python3 - "$@" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
used = json.loads(lines[-1])["time_s"] / 60 if lines else 0
every = json.loads((run / "run.json").read_text())["chunk"] if (run / "run.json").exists() else sys.argv[2]
print(f"{used:.2f} {every}")
PY
}
for cell in "$@"; do
  IFS=: read -r algo ways shots <<< "$cell"
  dir=$runs/vinyals_${algo}_${ways}w${shots}s
  read -r used every <<< "$(resumed "$dir" "$([ "$algo" = relation ] && echo 500 || echo 200)")"
  chunk=$([ "$algo" = relation ] && [ "$ways" = 20 ] && echo 4 || echo 10)
  python3 benchmarks/omniglot_table.py run --algo "$algo" --ways "$ways" --shots "$shots" --runs-dir $runs \
      --budget-minutes "$(python3 -c "print($used + $minutes)")" --curve-every "$every" \
      --eval-chunk "$chunk" > "$logs/${algo}_${ways}w${shots}s.log" 2>&1 &
done
wait
nvidia-smi > $logs/nvidia-smi.txt 2>&1
python3 - "$OUT/omniglot_table.json" "$@" <<'PY'  # the rows of these cells alone
import json, sys
cells = {tuple(c.split(":")) for c in sys.argv[2:]}
rows = json.load(open("benchmarks/results/omniglot_table.json"))
mine = [r for r in rows if r["split"] == "vinyals" and (r["algo"], str(r["ways"]), str(r["shots"])) in cells]
json.dump(mine, open(sys.argv[1], "w"), indent=1)
PY
tar -czf "$OUT/logs.tar.gz" -C /tmp logs
for algo in $(printf '%s\n' "$@" | cut -d: -f1 | sort -u); do
  members=()
  for dir in $runs/vinyals_"$algo"_*; do
    cell=$(basename "$dir")
    newest=$(ls "$dir/checkpoints" | sort -n | tail -1)
    members+=("$cell/run.json" "$cell/metrics.jsonl" "$cell/curve.jsonl" "$cell/checkpoints/$newest")
  done
  tar -cf "$OUT/runs_$algo.tar" -C $runs "${members[@]}"
done
grep -h "test tasks after" $logs/*.log
ls -l "$OUT"
