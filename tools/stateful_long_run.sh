#!/bin/bash
# The long run of tests/unit/test_virtio_stateful.py in chunks, so that progress counts
# even when the run is stopped: CHUNK examples of one device per pytest run, each chunk
# with its own --hypothesis-seed, two lanes (one per core) at nice 19, one line appended to
# SUMMARY per chunk (device, seed, examples, exit status, commit, seconds).  A failing
# chunk's output is kept beside SUMMARY as FAIL-<device>-<seed>.log.  It runs until it is
# killed; to go on later without repeating seeds, start it with another BASE.
#
# usage (from the repository, in the venv): CHUNK=2000 BASE=1000 SUMMARY=/tmp/long/summary.txt \
#            tools/stateful_long_run.sh
# count:  awk '{split($3,a,"="); n[$1]+=a[2]} END {for (d in n) print d, n[d]}' SUMMARY
set -u
CHUNK=${CHUNK:-1000}
BASE=${BASE:-0}
SUMMARY=${SUMMARY:-stateful-long-run.txt}
mkdir -p "$(dirname "$SUMMARY")"
LOGS=$(dirname "$SUMMARY")
COMMIT=$(git rev-parse --short HEAD)

lane() {
    local seed=$1
    shift
    while true; do
        for machine in "$@"; do
            local start=$SECONDS
            STRATOVMM_FUZZ_EXAMPLES=$CHUNK STRATOVMM_TEST_TIMEOUT=0 nice -n 19 \
                python -m pytest -q -n 0 -p no:randomly -p no:cacheprovider \
                --hypothesis-seed="$seed" "tests/unit/test_virtio_stateful.py::$machine" \
                > "$LOGS/last-$machine.log" 2>&1
            local rc=$?
            echo "$machine seed=$seed examples=$CHUNK rc=$rc commit=$COMMIT" \
                 "seconds=$((SECONDS - start))" >> "$SUMMARY"
            [ $rc -ne 0 ] && cp "$LOGS/last-$machine.log" "$LOGS/FAIL-$machine-$seed.log"
            seed=$((seed + 2))
        done
    done
}

lane $((BASE + 1)) TestBlk TestNet TestConsole &
lane $((BASE + 2)) TestVsock TestRng TestBalloon &
wait
