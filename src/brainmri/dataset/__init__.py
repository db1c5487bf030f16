"""The data stages: fetch, merge, dedup and split, and the curated dataset's datasheet."""
