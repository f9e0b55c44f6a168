"""Alembic environment: runs taskmon's migrations on the Engine handed in by storage.db."""
from alembic import context

from storage.schema import metadata
from storage.search import in_metadata

engine = context.config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
        include_object=in_metadata,
    )
    context.run_migrations()
