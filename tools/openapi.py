"""`make openapi`: write the OpenAPI document the code serves to docs/openapi.json.

The committed document is the API contract under version control: a test fails when the
served one differs from it, so a change to the API shows up in review as a change to this
file (and, when it can break a client, in CHANGELOG.md).

    python -m tools.openapi [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from pydantic import MySQLDsn

from app import create_app
from app.settings import Settings
from tools import REPO

COMMITTED = REPO / "docs" / "openapi.json"


async def served_document() -> dict[str, Any]:
    """The document as GET /openapi.json answers it; nothing is connected to build it."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=MySQLDsn("mysql://openapi:unused@127.0.0.1:1/openapi"),
    )
    response = await create_app(settings).test_client().get("/openapi.json")
    document: dict[str, Any] = await response.get_json()
    return document


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.openapi", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    arguments = parser.parse_args()
    text = render(asyncio.run(served_document()))
    if arguments.check:
        if COMMITTED.read_text() != text:
            sys.exit(f"{COMMITTED.relative_to(REPO)} is out of date: run make openapi")
        return
    COMMITTED.parent.mkdir(exist_ok=True)
    COMMITTED.write_text(text)
    print(f"wrote {COMMITTED.relative_to(REPO)}")


if __name__ == "__main__":
    main()
