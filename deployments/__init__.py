"""Ray Serve deployments: one per file, thin wrappers over the pure core."""
