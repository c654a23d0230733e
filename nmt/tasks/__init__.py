"""Tasks: one LightningModule per task shape."""
