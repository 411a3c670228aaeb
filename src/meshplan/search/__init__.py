"""Search: enumerate every legal plan, cost them all at once, rank the ones that fit."""
