"""Data: sources (synthetic, later TFDS and folders), preprocessing ops, the Grain pipeline.

Never imports models or training.
"""
