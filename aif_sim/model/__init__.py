"""The real pre-ranking model: synthetic world, AIF model (BEA, LSH-SIM), baselines, training, evaluation, calibration."""
