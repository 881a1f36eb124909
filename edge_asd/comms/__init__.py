"""How the daemon talks to the outside: MQTT with a durable outbox and HA discovery (``mqtt``),
the journal when no broker is configured (``log``), or nothing at all (``null``, for
calibration). The pipeline only sees ``comms.base.Communicator``; the recording implementation
the tests assert on lives in ``tests/fixtures/comms.py``.
"""
