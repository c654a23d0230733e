"""Built-in plugins of nmt, registered through the nmt.plugins entry-point group."""
