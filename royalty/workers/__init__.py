"""Worker processes that `royalty up` starts as children (or that run as their own service)."""
