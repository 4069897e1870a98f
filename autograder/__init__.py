"""The course autograder: checks, guards and the nbgrader-based CLI."""
