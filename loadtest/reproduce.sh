#!/usr/bin/env bash
# Every figure in docs/loadtest.md, from scratch: each scenario on a fresh local stack (one
# DSP-baseline predictor + the gateway), in three configurations, then the report. Run it on a
# quiet machine: the figures are only as good as the CPU the stack gets.
#
#   bash loadtest/reproduce.sh [OUT_DIR]        (default out/loadtest)
#
# A subset, to fit a time budget (the report covers whatever runs OUT_DIR holds, each with
# its own date):
#   CONFIGS="mixed-queue-8 jobs-queue-8 mixed-queue-64"   which configurations (default: all three)
#   SCENARIOS="ramp spike soak arrival"                   which scenarios (arrival measures capacity
#                                                         first); mixed-queue-64 only ever runs ramp
#   PLAN=1                                                print what would run and how long, run nothing
#   NOTE="..."                                            a line at the top of docs/loadtest.md, e.g.
#                                                         that the machine was shared with other jobs
#
# Wall time per scenario, measured (2026-11-26, 2 shared cores), including the stack's start
# and k6's graceful stop: ramp ~3.2 min, spike ~2.1, soak ~3.5, arrival ~3.5 (capacity ~1 min
# of it). One configuration with every scenario ~12.3 min; the whole script ~28-29 min (the
# last full run: 28 min 10 s from the first stack to the report). Under 25 minutes:
# SCENARIOS="ramp spike arrival" (~22 min, every configuration, no soak), or two sittings,
# CONFIGS="mixed-queue-8 mixed-queue-64" (~16.5 min) then CONFIGS=jobs-queue-8 (~13 min) into
# the same OUT_DIR. PLAN=1 prints the estimate of a choice.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/loadtest}"
configs="${CONFIGS:-mixed-queue-8 jobs-queue-8 mixed-queue-64}"
scenarios="${SCENARIOS:-ramp spike soak arrival}"
declare -A minutes=([ramp]=3.2 [spike]=2.1 [soak]=3.5 [arrival]=3.5)

for s in $scenarios; do
    [[ -n "${minutes[$s]:-}" ]] || { echo "unknown scenario $s: use ramp spike soak arrival" >&2; exit 2; }
done

# How each configuration is run: its gateway settings, its flags, the scenarios it takes.
#  mixed-queue-8: jobs and v2 pass-through (25 %), the job queue sized to the latency goal:
#    (12 s - service time) x the ~1-2 jobs/s this machine separates, less the 4 running.
#  jobs-queue-8: the same with jobs only: the async path without pass-through requests
#    competing for the predictor.
#  mixed-queue-64: the gateway's default queue bound, for the latency it lets accepted jobs wait.
config() {  # NAME -> "QUEUE|FLAGS|SCENARIOS"
    case "$1" in
        mixed-queue-8) echo "8||$scenarios" ;;
        jobs-queue-8) echo "8|--v2-share 0|$scenarios" ;;
        mixed-queue-64) echo "64||$(for s in $scenarios; do [[ $s == ramp ]] && echo ramp; done)" ;;
        *) return 1 ;;
    esac
}

total=0
for c in $configs; do
    spec=$(config "$c") || { echo "unknown configuration $c: use mixed-queue-8 jobs-queue-8 mixed-queue-64" >&2; exit 2; }
    for s in ${spec##*|}; do
        echo "plan: $c $s (~${minutes[$s]} min)"
        total=$(awk -v a="$total" -v b="${minutes[$s]}" 'BEGIN { print a + b }')
    done
done
echo "plan: ~${total} min of scenarios + ~1 min of report (measured on a shared 2-core machine)"
[[ "${PLAN:-0}" == 1 ]] && exit 0

status=0
for c in $configs; do
    spec=$(config "$c")
    queue=${spec%%|*}
    rest=${spec#*|}
    flags=${rest%%|*}
    for s in ${spec##*|}; do
        # shellcheck disable=SC2086  # flags is a word list
        MUSICSPLIT_GATEWAY_MAX_QUEUED_JOBS=$queue musicsplit loadtest "$s" --stack $flags \
            --out "$out/$c/$s.json" || status=$?
    done
done
# The runs the report is made from are kept in git (docs/loadtest/runs/CONFIG/SCENARIO.json: k6's
# summary and the samples the report reads, without the per-sample CSV): this run's replace
# their namesakes there, and the page is regenerated from every run kept, this run's or an
# earlier one's (tests/loadtest/test_report_current.py fails when the page and the runs disagree).
kept=docs/loadtest/runs
folders=()
for c in mixed-queue-8 jobs-queue-8 mixed-queue-64; do
    if compgen -G "$out/$c/*.json" >/dev/null; then
        mkdir -p "$kept/$c"
        cp "$out/$c"/*.json "$kept/$c/"
    fi
    compgen -G "$kept/$c/*.json" >/dev/null && folders+=("$kept/$c")
done
if ((${#folders[@]})); then
    musicsplit loadtest-report "${folders[@]}" --docs docs ${NOTE:+--note "$NOTE"} || status=$?
fi
exit $status
