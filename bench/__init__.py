"""Benchmarks of the service (docs/BENCHMARKS.md). Each script is a command: `python bench/<name>.py --help`."""
