"""Recipes that make the checkpoints the course ships (``python -m llmcourse.recipes.base``)."""
