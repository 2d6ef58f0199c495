"""Collect: Label Studio export snapshots flattened into a versioned Parquet table.

``export`` flattens (pure), ``table`` fixes the schema and the storage layout, ``snapshot``
is the glue the collect DAG calls. Columns and layout: docs/collect-audit.md.
"""
