"""The TAXII 2.1 server: medallion's views over the spampots store."""
