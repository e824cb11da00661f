"""The audit trail, the base every other package writes to: append-only events in a hash chain
(services), the overlapped writer and the barrier that holds a response until its read is on
the record (writer), the PostgreSQL triggers that refuse edits (guard), signed checkpoints and
verification. It imports nothing of departments, the catalogue or the rest of the exchange."""
