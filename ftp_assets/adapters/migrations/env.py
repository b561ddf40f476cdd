"""How Alembic runs the experiments table's migrations. They are run from code only
(:func:`ftp_assets.adapters.experiments_store.migrations_config`), never from an alembic.ini:
online on the caller's connection, passed as ``config.attributes["connection"]`` (Alembic's
"Sharing a Connection" recipe) so the migration joins the caller's transaction; offline (``--sql``)
rendered for ``config.attributes["dialect_name"]``.

A new revision: ``command.revision(migrations_config(), "what changes", rev_id="0002")``, then
write its upgrade; on SQLite, changes beyond adding a column need ``op.batch_alter_table``."""

from alembic import context

from ftp_assets.adapters.experiments_store import VERSION_TABLE

config = context.config

if context.is_offline_mode():
    context.configure(dialect_name=config.attributes["dialect_name"], literal_binds=True, version_table=VERSION_TABLE)
else:
    context.configure(connection=config.attributes["connection"], version_table=VERSION_TABLE)

with context.begin_transaction():
    context.run_migrations()
