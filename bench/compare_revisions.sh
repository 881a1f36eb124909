#!/usr/bin/env bash
# Run bench/listen_scale.py on an earlier revision and on the working tree, interleaved, so that
# both see the same machine: on a shared VM the figures of one version drift by a third between
# a quiet and a busy hour, more than most changes move them.
#
#   bench/compare_revisions.sh REV OUT_DIR [ROUNDS] [STREAMS...]
#   bench/compare_revisions.sh 6a47a22 bench/results/ab-fifth-pass 2 32 96
#
# Writes OUT_DIR/before_<rev>_<streams>_<round>.json and OUT_DIR/new_<streams>_<round>.json (odd
# rounds run the earlier revision first, even rounds the working tree, so that a drift within
# the hour does not favour one side), then OUT_DIR/hop_before_<rev>_<round>.json and
# OUT_DIR/hop_new_<round>.json (bench/hop_overhead.py --enrolled, the same order), and appends
# both commits, the working tree's changes, the rounds and the start and end times to
# OUT_DIR/revisions.txt. Rounds are numbered from FIRST_ROUND (default 1), so that more rounds
# can go into the same folder; a result file that exists already is never overwritten.
# The earlier revision is checked out in a temporary git worktree and imported from there
# (PYTHONPATH); both run with this checkout's .venv. BUNDLE (default /tmp/synth-bundle) and
# RUN_SECONDS (default 40) come from the environment.
set -euo pipefail
usage="usage: compare_revisions.sh REV OUT_DIR [ROUNDS] [STREAMS...]"
rev=${1:?$usage}
out=${2:?$usage}
rounds=${3:-2}
shift $(( $# < 3 ? $# : 3 ))
if [ $# -gt 0 ]; then streams=("$@"); else streams=(32 96); fi
repo=$(cd "$(dirname "$0")/.." && pwd)
python="$repo/.venv/bin/python"
bundle=${BUNDLE:-/tmp/synth-bundle}
seconds=${RUN_SECONDS:-40}
first=${FIRST_ROUND:-1}
short=$(git -C "$repo" rev-parse --short "$rev")
mkdir -p "$out"
out=$(cd "$out" && pwd)
old=$(mktemp -d)
cleanup() { git -C "$repo" worktree remove --force "$old" >/dev/null 2>&1 || true; rm -rf "$old"; git -C "$repo" worktree prune; }
trap cleanup EXIT
trap 'exit 130' INT TERM  # through the EXIT trap: no worktree left behind
git -C "$repo" worktree add --detach -f "$old" "$rev" >/dev/null
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
last=$(( first + rounds - 1 ))
for round in $(seq "$first" "$last"); do
  for f in "$out/new_"*"_${round}.json" "$out/hop_new_${round}.json"; do
    if [ -e "$f" ]; then echo "$f exists: choose another OUT_DIR or FIRST_ROUND" >&2; exit 2; fi
  done
done
{
  echo "rounds $first-$last, before: $(git -C "$repo" rev-parse "$rev")"
  echo "new: $(git -C "$repo" rev-parse HEAD) plus the working tree's changes:"
  git -C "$repo" status --porcelain
  echo "started: $(date -u +%FT%TZ)"
} >> "$out/revisions.txt"

before() {  # before NAME ARGS...: one bench script on the earlier revision
  local script=$1; shift
  (cd "$old" && PYTHONPATH="$old" "$python" "bench/$script" "$@")
}
new() {  # new NAME ARGS...: the same on the working tree
  local script=$1; shift
  (cd "$repo" && PYTHONPATH="$repo" "$python" "bench/$script" "$@")
}
pair() {  # pair ROUND LABEL SCRIPT BEFORE_OUT NEW_OUT ARGS...: both, in the round's order
  local round=$1 label=$2 script=$3 before_out=$4 new_out=$5; shift 5
  if (( round % 2 == 1 )); then
    echo "== $short (before), $label, round $round" >&2; before "$script" "$@" --out "$before_out"
    echo "== working tree, $label, round $round" >&2; new "$script" "$@" --out "$new_out"
  else
    echo "== working tree, $label, round $round" >&2; new "$script" "$@" --out "$new_out"
    echo "== $short (before), $label, round $round" >&2; before "$script" "$@" --out "$before_out"
  fi
}
for round in $(seq "$first" "$last"); do
  for n in "${streams[@]}"; do
    pair "$round" "$n streams" listen_scale.py "$out/before_${short}_${n}_${round}.json" "$out/new_${n}_${round}.json" \
      --bundle "$bundle" --streams "$n" --seconds "$seconds"
  done
  pair "$round" "hop_overhead" hop_overhead.py "$out/hop_before_${short}_${round}.json" "$out/hop_new_${round}.json" \
    --bundle "$bundle" --streams 32 --hops 40 --enrolled > /dev/null
done
echo "ended: $(date -u +%FT%TZ)" >> "$out/revisions.txt"
echo "wrote $out"
