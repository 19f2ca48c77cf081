"""The measurement database: schema and migrations, row types, writes and reads
(SQLite, PostgreSQL)."""
