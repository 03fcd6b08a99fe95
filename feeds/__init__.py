"""spampots-feeds: the pipeline from sensor batches to partner feeds and digests."""
