"""Pure decision logic, one module per primitive: no I/O, no clock, no event loop."""
