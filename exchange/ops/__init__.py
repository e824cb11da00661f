"""Running the service: the health endpoint, worker heartbeats and the purge of expired API
tokens."""
