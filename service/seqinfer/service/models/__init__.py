"""Model specifications, weights, loading and the registry of served models."""
