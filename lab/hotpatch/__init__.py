"""hotpatch."""
