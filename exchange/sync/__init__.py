"""Data movement, from a department's source to another department's target: connections and
their secrets, sources and readers (with the SSRF guard), ingest into the store, subscriptions
and delivery of the granted view, runs and their jobs, and the data-flow pages and API."""
