"""Image embedders: `classic` (offline, model-free) and `clip` (open_clip). See pipeline/embed.py."""
