#!/usr/bin/env bash
# Fuzzes every decoder of untrusted bytes (fuzz/fuzz_targets/: reply and
# request records, stored replies and notifications, correlation ids,
# traceparent, Prefer, the gateway's settings file) with cargo-fuzz/libFuzzer,
# each target for a fixed number of executions. Exits non-zero when a target
# crashes (a panic, a failed check, a sanitizer report); the input that did it
# is kept in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [--smoke] [TARGET...]
#
#   --smoke          CI mode: FUZZ_RUNS defaults to 20000
#   TARGET...        only these targets (default: all of them)
#
#   FUZZ_RUNS        executions per target (default 200000; 20000 with --smoke)
#   FUZZ_SANITIZER   address (default) or none
#   FUZZ_SEED        libFuzzer's random seed (default: a fresh one, printed)
#   FUZZ_MAX_TIME    bound per target in seconds, on top of FUZZ_RUNS (default none)
#   FUZZ_WORK        scratch directory: grown corpora, logs, temp files
#                    (default fuzz/target/fuzz-work; emptied at each run)
#
# The targets need nightly compiler flags (cargo-fuzz passes
# -Zsanitizer=address, and libFuzzer's coverage flags); this machine has the
# stable toolchain only, so they are allowed with RUSTC_BOOTSTRAP=1 (it has no
# other effect on the build). The sanitizer's runtime is not a Debian package:
# rustup's stable toolchain ships it for x86_64-unknown-linux-gnu
# (lib/rustlib/<host>/lib/librustc-stable_rt.asan.a). A toolchain without it
# (a distribution's rustc, another host) makes this script fail, never fuzz
# without the sanitizer behind the caller's back: FUZZ_SANITIZER=none is the
# only way to fuzz without it, and the summary says so. After the build every
# target binary is checked for the sanitizer's runtime (__asan_init).
#
# The seed corpora in fuzz/corpus/<target>/ are only read: what the fuzzer
# finds goes to FUZZ_WORK.
#
# Reproduce a crash:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export RUSTC_BOOTSTRAP=1

CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS=(reply_record request_record stored_reply correlation_id traceparent prefer config)

SMOKE=0
TARGETS=()
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "fuzz.sh: unknown option $arg" >&2
            exit 2
            ;;
        *)
            if [[ ! " ${ALL_TARGETS[*]} " == *" $arg "* ]]; then
                echo "fuzz.sh: unknown target $arg (targets: ${ALL_TARGETS[*]})" >&2
                exit 2
            fi
            TARGETS+=("$arg")
            ;;
    esac
done
((${#TARGETS[@]})) || TARGETS=("${ALL_TARGETS[@]}")

if ((SMOKE)); then
    RUNS=${FUZZ_RUNS:-20000}
else
    RUNS=${FUZZ_RUNS:-200000}
fi
SANITIZER=${FUZZ_SANITIZER:-address}
WORK=${FUZZ_WORK:-$ROOT/fuzz/target/fuzz-work}

dict_of() {
    case "$1" in
        reply_record | request_record) echo fuzz/dict/record.dict ;;
        prefer) echo fuzz/dict/prefer.dict ;;
        config) echo fuzz/dict/config.dict ;;
    esac
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
echo "==> $(cargo fuzz --version), $(rustc --version), sanitizer: $SANITIZER, runs per target: $RUNS"

rm -rf "$WORK"
mkdir -p "$WORK/logs" "$WORK/tmp"

case "$SANITIZER" in
    address | none) ;;
    *)
        echo "fuzz.sh: FUZZ_SANITIZER must be address or none, not $SANITIZER" >&2
        exit 2
        ;;
esac
HOST=$(rustc -vV | sed -n 's/^host: //p')
if [[ $SANITIZER == address ]]; then
    runtime_dir="$(rustc --print sysroot)/lib/rustlib/$HOST/lib"
    if ! compgen -G "$runtime_dir/librustc-*_rt.asan.a" >/dev/null; then
        echo "==> the address sanitizer's runtime (librustc-*_rt.asan.a) is missing from $runtime_dir:" >&2
        echo "    install the Rust toolchain with rustup (its x86_64-unknown-linux-gnu standard library ships it)," >&2
        echo "    or fuzz without the sanitizer on purpose with FUZZ_SANITIZER=none" >&2
        exit 1
    fi
fi

echo "==> building the targets (log: $WORK/logs/build.log)"
start=$(now)
if ! cargo fuzz build --sanitizer "$SANITIZER" >"$WORK/logs/build.log" 2>&1; then
    tail -40 "$WORK/logs/build.log" >&2
    echo "==> build with --sanitizer $SANITIZER failed (log: $WORK/logs/build.log)" >&2
    exit 1
fi
if [[ $SANITIZER == address ]]; then
    command -v nm >/dev/null 2>&1 || {
        echo "==> nm (binutils) is needed to check the targets for the sanitizer" >&2
        exit 1
    }
    for target in "${TARGETS[@]}"; do
        bin="fuzz/target/$HOST/release/$target"
        # grep reads all of nm's output (no -q), so pipefail sees no SIGPIPE.
        if ! nm "$bin" 2>/dev/null | grep ' __asan_init$' >/dev/null; then
            echo "==> $bin was built without the address sanitizer (no __asan_init): refusing to fuzz it" >&2
            exit 1
        fi
    done
fi
echo "==> build: $(elapsed "$start" "$(now)") s"

failed=()
summary=()
for target in "${TARGETS[@]}"; do
    corpus="$WORK/corpus/$target"
    mkdir -p "$corpus" "fuzz/corpus/$target"
    log="$WORK/logs/$target.log"
    args=("-runs=$RUNS" -print_final_stats=1 -timeout=30 -rss_limit_mb=2048)
    dict=$(dict_of "$target")
    [[ -n $dict ]] && args+=("-dict=$dict")
    [[ -n ${FUZZ_SEED:-} ]] && args+=("-seed=$FUZZ_SEED")
    [[ -n ${FUZZ_MAX_TIME:-} ]] && args+=("-max_total_time=$FUZZ_MAX_TIME")
    start=$(now)
    status=0
    # The first corpus directory receives new inputs; the seeds are only read.
    TMPDIR="$WORK/tmp" cargo fuzz run --sanitizer "$SANITIZER" "$target" \
        "$corpus" "fuzz/corpus/$target" -- "${args[@]}" >"$log" 2>&1 || status=$?
    secs=$(elapsed "$start" "$(now)")
    runs=$(sed -n 's/^Done \([0-9]*\) runs in.*/\1/p' "$log" | tail -1)
    # Stopped early (a crash): the last status line's count.
    [[ -n $runs ]] || runs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$log" | tail -1)
    seed=$(sed -n 's/.*Seed: \([0-9]*\).*/\1/p' "$log" | head -1)
    found=$(find "$corpus" -type f | wc -l)
    if ((status == 0)); then
        line=$(printf '%-15s ok     runs %-9s %7s s  corpus %-5s seed %s' "$target" "${runs:-?}" "$secs" "$found" "${seed:-?}")
    else
        failed+=("$target")
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        line=$(printf '%-15s FAILED runs %-9s %7s s  exit %s  artifact %s' "$target" "${runs:-?}" "$secs" "$status" "${artifact:-none}")
        echo "---- $target (log: $log)" >&2
        grep -E 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer|SUMMARY' -A3 "$log" | head -30 >&2 || tail -30 "$log" >&2
    fi
    echo "$line"
    summary+=("$line")
done

echo "==> summary (sanitizer: $SANITIZER, runs per target: $RUNS)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "$((${#TARGETS[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
    echo "==> crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "${#TARGETS[@]} passed, 0 failed"
