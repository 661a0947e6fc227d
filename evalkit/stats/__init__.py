"""Figures from saved runs, torch-free: accuracy and its intervals (metrics), runs paired question by
question (pairing, compare), letter-distribution divergence (divergence), published rows (published)."""
