"""Vector search: the offline product index (embedding shards + a FAISS index), search, and retrieval evaluation."""
