"""Machinery shared by the experiments (scripts/experiments) and benchmarks (scripts/benchmarks), not product code:
child runs reused when finished, paired intervals, tables, profiling."""
