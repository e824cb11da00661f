"""Benchmarks of the exchange, run against the DATABASE_URL in the environment (default:
SQLite). Each one runs in a database of its own that it creates and drops, never in the
development or production database. ``python -m bench`` runs them all; see __main__.py."""
