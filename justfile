# Convenience recipes; the README's commands work without just.

# The main job: a real demo through the CLI.
demo:
    ./scripts/demo.sh

# The whole test suite (what CI runs).
test:
    ./scripts/test.sh

fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets -- -D warnings
