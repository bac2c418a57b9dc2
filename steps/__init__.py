"""Entry points of the MLproject, one thin module each."""
