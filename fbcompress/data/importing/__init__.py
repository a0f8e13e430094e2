"""`fbcompress data import`: a user's own product table and images into a dataset dir.

table.py reads JSONL, CSV or Parquet in bounded batches; fields.py maps the user's columns onto fbcompress's fields;
images.py decodes, checks and resizes one image (run in worker processes); importer.py runs the import in
resumable shards and hands the kept rows to the one dataset writer (`data.dataset_dir`).
"""
