# gunicorn -c gunicorn.conf.py: the same settings and hooks as `context-store serve`.
from service.gunicorn_conf import *  # noqa: F401,F403
