#!/usr/bin/env bash
# Every figure in docs/loadtest.md, from scratch: the scenarios on a fresh local stack (one
# DSP-baseline predictor + the gateway) per run, in three configurations, then the report.
# About 35 minutes; run it on a quiet machine.
#   bash loadtest/reproduce.sh [OUT_DIR]      (default out/loadtest)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/loadtest}"
status=0
# Jobs and v2 pass-through (25 %), the job queue sized to the latency goal:
# (12 s - service time) x the ~1-2 jobs/s this machine separates, less the 4 running.
MUSICSPLIT_GATEWAY_MAX_QUEUED_JOBS=8 musicsplit loadtest all --stack --no-report --out "$out/mixed-queue-8" || status=$?
# The same with jobs only: the async path without pass-through requests competing for the predictor.
MUSICSPLIT_GATEWAY_MAX_QUEUED_JOBS=8 musicsplit loadtest all --stack --no-report --v2-share 0 \
    --out "$out/jobs-queue-8" || status=$?
# The gateway's default queue bound, for the latency it lets accepted jobs wait.
MUSICSPLIT_GATEWAY_MAX_QUEUED_JOBS=64 musicsplit loadtest ramp --stack --out "$out/mixed-queue-64/ramp.json" || status=$?
musicsplit loadtest-report "$out/mixed-queue-8" "$out/jobs-queue-8" "$out/mixed-queue-64" --docs docs
exit "$status"
