#!/usr/bin/env bash
# Run bench/listen_scale.py on an earlier revision and on the working tree, interleaved, so that
# both see the same machine: on a shared VM the figures of one version drift by a third between
# a quiet and a busy hour, more than most changes move them.
#
#   bench/compare_revisions.sh REV OUT_DIR [ROUNDS] [STREAMS...]
#   bench/compare_revisions.sh 6a47a22 bench/results/ab-fifth-pass 2 32 96
#
# Writes OUT_DIR/before_<rev>_<streams>_<round>.json and OUT_DIR/new_<streams>_<round>.json,
# then OUT_DIR/hop_before_<rev>.json and OUT_DIR/hop_new.json (bench/hop_overhead.py --enrolled).
# The earlier revision is checked out in a temporary git worktree and imported first
# (PYTHONPATH); both run with this checkout's .venv. BUNDLE (default /tmp/synth-bundle) and
# RUN_SECONDS (default 40) come from the environment.
set -euo pipefail
rev=${1:?usage: compare_revisions.sh REV OUT_DIR [ROUNDS] [STREAMS...]}
out=${2:?usage: compare_revisions.sh REV OUT_DIR [ROUNDS] [STREAMS...]}
rounds=${3:-2}
shift $(( $# < 3 ? $# : 3 ))
if [ $# -gt 0 ]; then streams=("$@"); else streams=(32 96); fi
repo=$(cd "$(dirname "$0")/.." && pwd)
python="$repo/.venv/bin/python"
bundle=${BUNDLE:-/tmp/synth-bundle}
seconds=${RUN_SECONDS:-40}
short=$(git -C "$repo" rev-parse --short "$rev")
mkdir -p "$out"
out=$(cd "$out" && pwd)
old=$(mktemp -d)
trap 'git -C "$repo" worktree remove --force "$old" >/dev/null 2>&1 || true' EXIT
git -C "$repo" worktree add --detach -f "$old" "$rev" >/dev/null
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
for round in $(seq 1 "$rounds"); do
  for n in "${streams[@]}"; do
    echo "== $short (before), $n streams, round $round"
    (cd "$old" && PYTHONPATH="$old" "$python" bench/listen_scale.py --bundle "$bundle" --streams "$n" \
      --seconds "$seconds" --out "$out/before_${short}_${n}_${round}.json")
    echo "== working tree, $n streams, round $round"
    (cd "$repo" && "$python" bench/listen_scale.py --bundle "$bundle" --streams "$n" --seconds "$seconds" \
      --out "$out/new_${n}_${round}.json")
  done
done
(cd "$old" && PYTHONPATH="$old" "$python" bench/hop_overhead.py --bundle "$bundle" --streams 32 --hops 40 --enrolled \
  --out "$out/hop_before_${short}.json" > /dev/null)
(cd "$repo" && "$python" bench/hop_overhead.py --bundle "$bundle" --streams 32 --hops 40 --enrolled \
  --out "$out/hop_new.json" > /dev/null)
echo "wrote $out"
