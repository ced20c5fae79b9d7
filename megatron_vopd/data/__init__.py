"""Data for Vision-OPD (placeholder; filled below)."""
