"""A user's own data, outside tricksweep: factories named by import string in a sweep's dataset."""
