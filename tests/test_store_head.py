"""storage.store names the schema head without Alembic (for a fast read path); it must be Alembic's head."""
from storage.db import head_revision, migrations_head


def test_the_schema_head_the_read_path_expects_is_the_newest_migration():
    assert head_revision() == migrations_head()
