"""The sync engine: reading sources, writing targets, and the ingest and delivery services."""
