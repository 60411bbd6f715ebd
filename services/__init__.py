"""The three livedata daemons."""
