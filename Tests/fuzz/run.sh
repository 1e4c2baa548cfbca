#!/usr/bin/env bash
# Builds the libFuzzer targets (AddressSanitizer + libFuzzer, release, scratch path .build-fuzz) and
# runs each for SECONDS (default 60) from its committed seed corpus. Exits non-zero when any target
# crashes, hits a memory error or leak, runs past the per-input timeout or the RSS limit.
#
#   Tests/fuzz/run.sh [SECONDS] [http1|http2|config|pathnorm|tls ...]  # default: all five, 60 s each
#   Tests/fuzz/run.sh --replay                               # every corpus input once (seconds)
#
# New inputs go to .build-fuzz/corpus/<target>/ (the committed corpus is read, never written);
# a failing input is written to .build-fuzz/artifacts/ and the command to reproduce it is printed.
# See Tests/fuzz/README.md.
set -uo pipefail
cd "$(dirname "$0")/../.."

seconds=${FUZZ_SECONDS:-60}
replay=0
if [ "${1:-}" = "--replay" ]; then replay=1; shift
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(http1 http2 config pathnorm tls)

scratch=.build-fuzz
declare -A product=([http1]=FuzzHTTP1 [http2]=FuzzHTTP2 [config]=FuzzConfig [pathnorm]=FuzzPathNorm [tls]=FuzzTLS)
# Per-input timeout (s) and largest input (bytes). Every input takes well under a millisecond; 10 s
# is a hang. The config target reads whole files, the protocol targets streams of frames or requests.
declare -A timeout=([http1]=10 [http2]=10 [config]=10 [pathnorm]=10 [tls]=10)
declare -A maxlen=([http1]=16384 [http2]=16384 [config]=8192 [pathnorm]=1024 [tls]=4096)
declare -A dict=([http1]=Tests/fuzz/http1.dict [http2]= [config]=Tests/fuzz/config.dict [pathnorm]=Tests/fuzz/pathnorm.dict [tls]=)

for t in "${targets[@]}"; do
    [ -n "${product[$t]:-}" ] || { echo "unknown target $t (http1, http2, config, pathnorm, tls)" >&2; exit 2; }
done

# Coverage instrumentation and ASan for every Swift and C module of the targets (llhttp included;
# nghttp2 and libyaml are the system's, not instrumented, but their calls into Swift are).
build_flags=(-c release --scratch-path "$scratch"
             -Xswiftc -sanitize=fuzzer,address -Xcc -fsanitize=fuzzer-no-link,address)
for t in "${targets[@]}"; do
    echo "== building ${product[$t]}"
    REMORA_FUZZ=1 swift build "${build_flags[@]}" --product "${product[$t]}" || { echo "build of ${product[$t]} failed" >&2; exit 2; }
done

# LeakSanitizer stays on (libFuzzer checks each input that allocates more than it frees).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_stack_use_after_return=1}
# A failed check (fatalError) goes straight to libFuzzer's handler, not to Swift's backtracer.
export SWIFT_BACKTRACE=enable=no
failed=()
for t in "${targets[@]}"; do
    bin="$scratch/release/${product[$t]}"
    work="$scratch/corpus/$t"
    mkdir -p "$work" "$scratch/artifacts"
    opts=(-timeout="${timeout[$t]}" -rss_limit_mb=2048 -max_len="${maxlen[$t]}" -print_final_stats=1
          -artifact_prefix="$scratch/artifacts/$t-")
    [ -n "${dict[$t]}" ] && opts+=(-dict="${dict[$t]}")
    if [ $replay = 1 ]; then
        echo "== $t: replaying Tests/fuzz/corpus/$t"
        "$bin" "${opts[@]}" -runs=0 "Tests/fuzz/corpus/$t" > "$scratch/$t.log" 2>&1
    else
        echo "== $t: ${seconds} s"
        "$bin" "${opts[@]}" -max_total_time="$seconds" "$work" "Tests/fuzz/corpus/$t" > "$scratch/$t.log" 2>&1
    fi
    rc=$?
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|FuzzHTTP1:" "$scratch/$t.log" | sed 's/^/   /'
    if [ $rc -ne 0 ]; then
        failed+=("$t")
        echo "!! $t failed (exit $rc); log: $scratch/$t.log" >&2
        grep -E -A30 "ERROR:|==ERROR|Fatal error|ALARM|out-of-memory|deadly signal" "$scratch/$t.log" | head -60 >&2
        for a in $(grep -o "Test unit written to [^ ]*" "$scratch/$t.log" | awk '{print $5}'); do
            echo "   reproduce: $bin $a" >&2
        done
    fi
done

if [ ${#failed[@]} -gt 0 ]; then echo "fuzzing failed: ${failed[*]}" >&2; exit 1; fi
echo "fuzzing: no findings (${targets[*]})"
