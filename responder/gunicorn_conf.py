"""gunicorn configuration for the container image: the same options `responder serve` uses,
so the same worker (responder.bridge.BufferedWorker), which serves any WSGI app given:

    gunicorn --config python:responder.gunicorn_conf 'responder.app:create_app()'
"""

from responder.server import gunicorn_options
from responder.settings import Settings

# gunicorn reads this module's globals as its settings.
globals().update(gunicorn_options(Settings.from_env()))
