#!/usr/bin/env python3
"""Thin wrapper: `python run_sim.py ...` is the same as the `aif-sim` command."""

import sys

from aif_sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
