"""The whole pipeline: `fbcompress quickstart` and its report."""
