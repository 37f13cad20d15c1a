# PEFT Studio — two entry points for a fresh Debian/Ubuntu machine:
#   make run    set up and run the main job
#   make test   set up and run every test
# The cargo target dir lives outside the checkout so repeated runs (and CI) reuse builds.

CARGO_TARGET_DIR ?= $(HOME)/.cache/peft-studio/target
export CARGO_TARGET_DIR
CARGO ?= cargo

APP_RELEASE := $(CARGO_TARGET_DIR)/release/peft-studio
APP_DEBUG := $(CARGO_TARGET_DIR)/debug/peft-studio
SCREENSHOTS ?= $(CURDIR)/target/e2e-screenshots

.PHONY: run test setup fmt lint bench ui ui-test app app-debug e2e bindings cli-demo cuda fuzz

setup:
	@./scripts/setup.sh

# Opens the desktop app on the embedded default (bundled demo model + Bolt stories dataset,
# preselected; works offline). Without a display it says so and runs the CLI demo instead.
run: setup ui
	$(CARGO) build --release -p peft-studio --features custom-protocol
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then $(APP_RELEASE); \
	else echo "No display (DISPLAY/WAYLAND_DISPLAY unset): the app needs a desktop session."; \
	  echo "Headless, try: xvfb-run -a $(APP_RELEASE)  — running the CLI demo instead."; \
	  $(MAKE) --no-print-directory cli-demo; fi

cli-demo:
	$(CARGO) build --release -p peft-cli
	$(CARGO_TARGET_DIR)/release/peft info
	$(CARGO_TARGET_DIR)/release/peft generate --temperature 0 --max-new-tokens 120

# Every test: UI units, Rust (engine, CLI, shell through Tauri's mock runtime), then the real
# app end to end under Xvfb.
test: setup ui-test
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) --no-print-directory e2e

ui:
	npm --prefix ui run build

ui-test:
	npm --prefix ui run check
	npm --prefix ui test

# The real app (UI embedded, tauri:// protocol). Debug for tests: it reuses `cargo test`'s build.
app-debug: ui
	$(CARGO) build -p peft-studio --features custom-protocol

e2e: app-debug
	mkdir -p $(SCREENSHOTS)
	APP=$(APP_DEBUG) E2E_SCREENSHOTS=$(SCREENSHOTS) \
	  xvfb-run -a -s "-screen 0 1280x800x24" node tests/e2e/wizard.e2e.mjs

# Regenerates ui/src/lib/bindings from the Rust DTOs (the test fails when they are stale).
bindings:
	UPDATE_BINDINGS=1 $(CARGO) test -p peft-studio --lib bindings

# The fuzz suite with many more cases than `make test` runs (FUZZ_CASES per family; the seed
# with FUZZ_SEED). One line per family is appended to target/fuzz-report.txt.
FUZZ_CASES ?= 5000
FUZZ_SEED ?= 1
fuzz:
	mkdir -p target
	PEFT_FUZZ_CASES=$(FUZZ_CASES) PEFT_FUZZ_SEED=$(FUZZ_SEED) \
	  PEFT_FUZZ_REPORT=$(CURDIR)/target/fuzz-report.txt \
	  $(CARGO) test -p peft-engine --test fuzz -- --nocapture --test-threads 2

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The `peft` CLI with the CUDA backend (`--device cuda`), built on a machine without a GPU or a
# system CUDA toolkit from pinned CUDA 13.0 PyPI wheels and generated link stubs; writes
# target/cuda/peft and peft.xz. Not part of CI (long: nvcc compiles candle's kernels). See
# scripts/cuda-build.sh; run the result on a GPU machine with scripts/gpu-check.sh.
cuda:
	./scripts/cuda-build.sh
