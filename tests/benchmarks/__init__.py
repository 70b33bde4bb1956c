"""Performance benchmarks (run by hand or ``make bench-perf``; not collected by pytest)."""
