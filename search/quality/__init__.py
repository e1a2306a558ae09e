"""How good the answers are, and making them better: metrics, evaluate, tune, calibrate."""
