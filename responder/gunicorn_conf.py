"""gunicorn configuration for the container image: the same options `responder serve` uses.

    gunicorn --config python:responder.gunicorn_conf 'responder.app:create_app()'
"""

from responder.server import gunicorn_options
from responder.settings import Settings

# gunicorn reads this module's globals as its settings.
globals().update(gunicorn_options(Settings.from_env()))
