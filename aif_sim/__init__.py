"""aif-sim: simulate sequential vs asynchronous (AIF) pre-ranking inference."""

__version__ = "0.1.0"
