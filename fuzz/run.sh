#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30), starting from the committed seeds, and
# exits non-zero when any target crashes (the crashing input is left in fuzz/artifacts/<target>/).
# Needs the nightly toolchain and cargo-fuzz (installed here when missing).
set -euo pipefail

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [SECONDS]   (a positive number of seconds per target)" >&2
    exit 2
fi

cd "$(dirname "${BASH_SOURCE[0]}")"



if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzzing needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

targets=(http_framer propagation decode redact h2_frames hpack h2_exchange tls_switch go_elf traceparent_scan head_scan)
echo "== building the fuzz targets"
cargo +nightly fuzz build

mkdir -p logs
summary=()
failed=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    log="logs/$target.log"
    echo "== fuzzing $target for ${seconds}s"
    status=0
    # The first corpus directory collects new inputs; the seeds are only read.
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    runs="$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -n1 | grep -Eo '[0-9]+' || true)"
    if [ "$status" -ne 0 ]; then
        failed=1
        echo "!! $target FAILED (exit $status); last lines of $log:" >&2
        tail -n 40 "$log" >&2
        summary+=("$target: FAILED (exit $status)")
    else
        summary+=("$target: ok, ${runs:-?} runs in ${seconds}s")
    fi
done

echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
