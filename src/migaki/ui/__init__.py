"""`migaki ui`: see, compare, start and try runs in a browser."""
