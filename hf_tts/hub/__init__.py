"""Model cards, push helpers and the local Hub-compatible registry server."""
