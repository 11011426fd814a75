"""vagrant."""
