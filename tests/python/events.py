"""The one output format of the test clients: a JSON object per line on stdout, flushed as it
is printed, each with the seconds since the client started (`elapsed`)."""

import json
import time

START = time.monotonic()


def elapsed():
    return round(time.monotonic() - START, 3)


def emit(event, **fields):
    line = json.dumps({"event": event, **fields, "elapsed": elapsed()}, separators=(",", ":"))
    print(line, flush=True)
