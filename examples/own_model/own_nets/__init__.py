"""A user's own networks, reached by tricksweep only through import strings."""
