"""Training data: sources, records, tokenizing with the prompt masked, the cache, packing of rows, the data report."""
