"""Code shared by the three livedata daemons and the client SDK."""
