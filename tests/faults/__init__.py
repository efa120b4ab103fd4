"""The fault matrix: real exports under injected faults, each ending in a row of figures."""
