"""A user's own training code, outside tricksweep: a small MLP on scikit-learn's digits."""
