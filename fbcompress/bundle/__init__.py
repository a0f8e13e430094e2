"""The export bundle format: the files on disk, the manifest's schema, the graph inputs and shape profiles."""
