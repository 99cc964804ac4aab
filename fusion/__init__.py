"""The generation engine: a base pipeline with several LoRAs applied at once."""
