"""Discrete structure search (method.md section 8): spaces, random search, REINFORCE, AdaNet."""
