"""Benchmarks (`pointpeft-ray bench ...`): a table on the terminal, figures as JSON."""
