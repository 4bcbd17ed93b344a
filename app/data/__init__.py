"""Where data comes from: the database (pool, migrations, SQL) and the upstream API."""
