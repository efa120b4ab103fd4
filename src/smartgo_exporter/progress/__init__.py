"""Where run records live. `load_progress_store(config)` picks the backend by `config.type`."""
