"""A dispatcher module for `domainbus worker redis_traced:dispatcher --trace` (test_redis_cli):
it installs a global OpenTelemetry SDK provider writing finished spans as JSON lines to
`DOMAINBUS_TEST_SPANS`, as a user's module (or `opentelemetry-instrument`) would."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import domainbus
from observe_worker import JsonLines
from redis_support import CODEC, Placed

codec = CODEC

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(JsonLines(os.environ["DOMAINBUS_TEST_SPANS"])))
trace.set_tracer_provider(provider)

dispatcher = domainbus.Dispatcher()
dispatcher.register_handler(Placed, lambda event: None)
