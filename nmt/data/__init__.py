"""Data: readers, tokenizers, vocabularies, batching and data modules."""
