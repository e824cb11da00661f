"""Names a field may not have, because the record store turns fields into table columns.

PostgreSQL's reserved key words (documentation, appendix C, column "PostgreSQL": reserved,
including those that "can be function or type"), the system column names every table has,
and the few SQL-standard words SQLite also reserves that people are likely to try.
"""

POSTGRESQL_RESERVED = frozenset("""
all analyse analyze and any array as asc asymmetric authorization binary both case cast check
collate collation column concurrently constraint create cross current_catalog current_date
current_role current_schema current_time current_timestamp current_user default deferrable desc
distinct do else end except false fetch for foreign freeze from full grant group having ilike in
initially inner intersect into is isnull join lateral leading left like limit localtime
localtimestamp natural not notnull null offset on only or order outer overlaps placing primary
references returning right select session_user similar some symmetric system_user table
tablesample then to trailing true union unique user using variadic verbose when where window with
""".split())

POSTGRESQL_SYSTEM_COLUMNS = frozenset({"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid", "oid"})

SQL_COMMON_RESERVED = frozenset("""
add alter between by delete drop exists index insert key set update values view
""".split())

RESERVED_FIELD_NAMES = POSTGRESQL_RESERVED | POSTGRESQL_SYSTEM_COLUMNS | SQL_COMMON_RESERVED
