"""A dispatcher module that takes a while to import (`DOMAINBUS_TEST_IMPORT_SLEEP` seconds, after
writing `DOMAINBUS_TEST_IMPORTING`), for the worker's stop-while-starting test (test_redis_cli)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import domainbus
from redis_support import CODEC, Placed

Path(os.environ["DOMAINBUS_TEST_IMPORTING"]).write_text("importing")
time.sleep(float(os.environ["DOMAINBUS_TEST_IMPORT_SLEEP"]))

codec = CODEC
dispatcher = domainbus.Dispatcher()
dispatcher.register_handler(Placed, lambda event: None)
