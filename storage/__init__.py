"""The SQL history store: schema, migrations, writes and queries (SQLAlchemy Core)."""
