"""This process's settings, read from the environment once, and its logging, set up once.

`python -m app` and the ASGI module hypercorn loads (`app.asgi`, in that same process when
WORKERS=1, in each worker otherwise) both import this; a bad setting exits with one line
naming the variable.
"""

from app.settings import settings_or_exit
from app.telemetry.logs import configure_logging

settings, _ = settings_or_exit()
configure_logging(settings.log_level)
