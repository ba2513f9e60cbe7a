"""Training side: data, presets, networks, training, evaluation, checkpoints."""
