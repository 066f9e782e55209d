"""End-to-end pipelines built from the other packages (the quickstart main job)."""
