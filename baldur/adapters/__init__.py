"""Framework glue: Flask today; ASGI and Django later."""
