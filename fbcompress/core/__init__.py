"""The core layer: the one error contract, atomic artifact writing and hashing. Imports nothing else of fbcompress."""
