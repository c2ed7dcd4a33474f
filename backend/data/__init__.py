"""Data: import, validation, curation, views, buckets and caches."""
