"""The scorer bentos. Each file is one BentoML service; the shared code is in healmesh.serving."""
