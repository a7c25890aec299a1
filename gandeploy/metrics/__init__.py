"""Metrics: FID (features, statistics, Frechet distance) with no download at run time."""
