"""Message store implementations: PostgreSQL (the embedded default) and ScyllaDB."""
