"""The live engine: the scenario run in wall-clock time in one asyncio process."""
