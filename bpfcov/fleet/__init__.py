"""The fleet store: one PostgreSQL database that many hosts push their coverage into.

Each host keeps tracing into its own data file, as without a store; at every --interval
snapshot and at the end it also pushes the counts gained since its last push. The store
sums them per build, host and day, and keeps for every function when it first and last
ran, so `bpfcov report URL` answers "is this code dead?" for the whole fleet over time.

- connection.py: which store a URL names, and opening it (psycopg 3, an optional extra).
- schema.py: the tables, created and migrated by numbered migrations.
- push.py: what one push carries, how the server applies it exactly once, and the
  background thread that delivers pushes with retries while tracing goes on.
- query.py: the store's data as one coverage, for the reports.
"""
