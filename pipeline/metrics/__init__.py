"""Evaluation metrics: mixture mode coverage for toy data, image metrics for real data."""
