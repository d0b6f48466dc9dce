"""Video backbones (registered by name). Filled in by the models work."""
