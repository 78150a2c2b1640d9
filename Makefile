# callrelay: two commands do everything on a fresh clone: `make run` and `make test`.

CARGO ?= cargo
ARGS ?=

.PHONY: all build release run test lint fmt clippy clean deps qt qt-golden fuzz soak bench deb deb-check

QMAKE ?= /usr/lib/qt5/bin/qmake
QT_BUILD := target/qt

all: build

# Debug build of the library, the relay and the tests.
build:
	$(CARGO) build --all-targets

# Optimised binaries (what operators deploy).
release:
	$(CARGO) build --release

# Build and start the relay on its defaults (0.0.0.0:8888); pass options with ARGS="--port 9000".
run: release
	./target/release/callrelay $(ARGS)

# Everything the tests need, then every test: unit, codec properties, integration over real sockets, lint,
# and the Debian package installed, run and removed again.
test: lint qt
	$(CARGO) test --all-targets
	$(MAKE) --no-print-directory deb-check

# The Debian package: target/debian/callrelay_VERSION_amd64.deb (cargo-deb, installed when missing).
deb:
	command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked
	$(CARGO) deb

# Builds the package, installs it with dpkg, runs the installed relay with the installed
# config on a free port, places calls through it, and removes the package (needs root).
deb-check: deb
	./.ci/deb-check

# Install what the tests need beyond Rust (Qt 5 and a C++ compiler, from Debian) when missing.
deps:
	./.ci/install-deps

# Build the real Qt 5 client of the interop tests into target/qt/qtclient.
qt: deps
	mkdir -p $(QT_BUILD)
	cd $(QT_BUILD) && $(QMAKE) ../../tests/qt/qtclient.pro && $(MAKE) --no-print-directory -s

# Regenerate the Qt-written golden vectors the codec tests compare against.
qt-golden: qt
	$(QT_BUILD)/qtclient golden > tests/qt/golden.txt

# Benchmark suite (relay vs plain loopback vs HAProxy, installed when missing): raw JSON in bench/out/, report in bench/RESULTS.md.
bench:
	./bench/run.sh

# Formatting and clippy must stay clean; protocol/ and relay/ must not use mio (layering).
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	@if grep -rn "mio" src/protocol src/relay; then echo "protocol/ and relay/ must not depend on mio"; exit 1; fi

# Fuzz for FUZZ_SECONDS each (default 600), with cargo-fuzz (installed when missing; RUSTC_BOOTSTRAP
# lets the stable toolchain take libFuzzer's sanitizer flags): the parser (peek/commit, media runs),
# the pipe's pure decisions, and the real server's event loop driven over loopback sockets.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= parser pipe session token
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz
	for target in $(FUZZ_TARGETS); do \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir tests/fuzz $$target tests/fuzz/corpus/$$target \
	    -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

# Soak: the load tool's mixed scenario against a fresh release relay for SOAK_SECONDS (default 600);
# reports errors, RSS over time, and whether connections, calls and users returned to zero.
SOAK_SECONDS ?= 600
SOAK_PORT ?= 18777
SOAK_METRICS_PORT ?= 18778
soak: release
	@RUST_LOG=warn ./target/release/callrelay --listen 127.0.0.1:$(SOAK_PORT) --metrics-listen 127.0.0.1:$(SOAK_METRICS_PORT) > target/soak-relay.log 2>&1 & \
	relay=$$!; trap 'kill $$relay 2>/dev/null' EXIT; \
	for i in $$(seq 50); do grep -q "listening on" target/soak-relay.log && break; sleep 0.1; done; \
	./target/release/callrelay-load mixed --addr 127.0.0.1:$(SOAK_PORT) --metrics 127.0.0.1:$(SOAK_METRICS_PORT) \
	  --server-pid $$relay --duration $(SOAK_SECONDS); status=$$?; \
	kill -TERM $$relay; wait $$relay; echo "relay exit status $$?"; exit $$status

# Rewrite the sources in the project's format.
fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
