# PEFT Studio — two entry points for a fresh Debian/Ubuntu machine:
#   make run    set up and run the main job
#   make test   set up and run every test
# The cargo target dir lives outside the checkout so repeated runs (and CI) reuse builds.

CARGO_TARGET_DIR ?= $(HOME)/.cache/peft-studio/target
export CARGO_TARGET_DIR
CARGO ?= cargo

.PHONY: run test setup fmt lint bench

setup:
	@./scripts/setup.sh

run: setup
	$(CARGO) build --release -p peft-cli
	$(CARGO_TARGET_DIR)/release/peft info
	$(CARGO_TARGET_DIR)/release/peft generate --temperature 0 --max-new-tokens 120

test: setup
	$(CARGO) test --workspace --no-fail-fast

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
