"""The access version (migration ``exchange/0011``): a number that moves in the same
transaction as any change that a records request's cached context depends on. Read by token
authentication together with the token, and by ``exchange.records.read_cache``. Kept apart from the
cache so that authentication can import it without the catalogue and the policy."""

VERSION_SQL = "SELECT COALESCE(SUM(value), 0) FROM exchange_access_version"
# Set by token authentication on the user object it builds for one request.
VERSION_ATTR = "_exchange_access_version"
