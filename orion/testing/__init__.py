"""Support for tests and benchmarks that use real components (emulators)."""
