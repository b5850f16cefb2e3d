"""The discrete-event simulation engine (simpy, virtual time in seconds)."""
