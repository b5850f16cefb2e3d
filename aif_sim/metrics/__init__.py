"""Measurement: histograms, the recorder that owns every counter, the typed summary, output streams."""
