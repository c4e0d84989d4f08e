"""CPU tests run in CI. A package so test files can share `tests.oracle` (the transformers reference)."""
