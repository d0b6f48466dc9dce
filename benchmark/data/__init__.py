"""Video data: annotation readers, file resolution, decoding, clip sampling, transforms, synthetic data."""
