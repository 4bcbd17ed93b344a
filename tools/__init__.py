"""What the Makefile runs besides the service: the private MariaDB (`make run`), the
one-machine cluster and its drills (`make cluster`, `make cluster-drill`).

The tests and the benchmarks import these; nothing here imports the tests.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
