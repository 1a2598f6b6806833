"""Model families, one folder each (transformers' model-folder convention)."""
