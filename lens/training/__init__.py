"""Training side: synthetic and real data, the model, losses, stages and checkpoints."""
