"""Ingestion: the bounded buffer between sources and the writer, event decoding into partial rows,
the per-batch merge, the helper process that prepares rows, and the writer thread that commits them."""
