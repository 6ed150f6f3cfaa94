"""Config files (ml_collections, `get_config(arg)`); run from the repository root."""
