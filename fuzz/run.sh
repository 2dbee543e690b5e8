#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds (default 60) and reports executions and findings.
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Uses the nightly toolchain with ASan when it
# is installed, else stable without sanitizer (`-s none`).
set -uo pipefail
cd "$(dirname "$0")" || exit 1
secs="${1:-60}"
if rustup toolchain list 2>/dev/null | grep -q nightly; then
    tc=(+nightly); san=()
else
    tc=(); san=(-s none)
fi
# Crash, leak and timeout inputs a target left in its artifacts directory.
findings() {
    find "artifacts/$1" -mindepth 1 -maxdepth 1 ! -name run.log ! -name new-corpus | wc -l
}
targets=$(cargo "${tc[@]}" fuzz list)
status=0
printf '%-14s %12s %8s\n' target execs findings
for t in $targets; do
    corpus="corpus/$t"
    # New inputs go to a scratch directory; the committed seeds are read, not grown.
    mkdir -p "artifacts/$t/new-corpus"
    log="artifacts/$t/run.log"
    before=$(findings "$t")
    cargo "${tc[@]}" fuzz run "${san[@]}" "$t" "artifacts/$t/new-corpus" "$corpus" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    after=$(findings "$t")
    found=$((after - before))
    printf '%-14s %12s %8s\n' "$t" "${execs:-?}" "$found"
    if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then status=1; fi
done
exit $status
