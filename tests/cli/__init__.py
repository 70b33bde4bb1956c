"""Headless CLI tests: servedeck subcommands through tests/cli_runner.py or a `servedeck` process."""
