"""Where state lives: memory (one process) or Redis (shared)."""
