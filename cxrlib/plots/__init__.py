"""Figures of the notebooks; nothing in the methods imports this package."""
