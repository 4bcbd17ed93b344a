"""`python -m app.migrate` (`make migrate`): apply the pending migrations, then exit.

The deploy step when the service itself is not to migrate at start; the runner is
app.data.migrate.
"""

from __future__ import annotations

import asyncio
import sys

import asyncmy

from app.data.migrate import MigrationError, migrate
from app.settings import settings_or_exit


def main() -> None:
    _, database_url = settings_or_exit()
    try:
        applied = asyncio.run(migrate(database_url))
    except (MigrationError, asyncmy.errors.Error, OSError) as error:
        sys.exit(f"migration failed: {error}")
    print(f"migrations: {len(applied)} applied" + (f" ({', '.join(applied)})" if applied else ""))


if __name__ == "__main__":
    main()
