"""Data: sources (SynthBirds, the official archives, TFDS copies, folders), split names and
holdouts, decoding, the §4.1 augmentations, and the Grain pipeline."""
