"""Fast pins of the plan core for `make mutate` (filled per module)."""
