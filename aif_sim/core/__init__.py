"""The engine-neutral core: pipelines, requests, traffic and service-time samplers (no simpy, no asyncio)."""
