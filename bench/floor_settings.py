"""The project's settings with ``bench.floor`` as the only URLs (see ``bench/floor.py``)."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.floor"
