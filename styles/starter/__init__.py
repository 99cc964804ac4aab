"""Procedural starter world: deterministic scenes, captions and 28 composable image styles."""
