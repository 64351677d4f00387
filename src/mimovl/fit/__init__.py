"""What a Lightning fit is assembled from besides the LightningModule: the Trainer with its callbacks (non-finite
guard, progress bar, throughput), the atomic checkpoint plugin and the loggers."""
