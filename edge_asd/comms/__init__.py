"""How the daemon talks to the outside: MQTT with a durable outbox, HA discovery, and an
in-memory implementation for tests. The pipeline only sees ``comms.base.Communicator``.
"""
