"""The `anomaly` command line: argument parsing only; the work happens in the packages."""
