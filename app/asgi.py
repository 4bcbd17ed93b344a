"""The ASGI app hypercorn's workers load (`app.asgi:app`), configured from the environment."""

from app import create_app
from app.logs import configure_logging
from app.settings import Settings

settings = Settings()
configure_logging(settings.log_level)
app = create_app(settings)
