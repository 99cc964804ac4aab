"""What a style is and where styles live: LoRA files, their validation, the catalog."""
