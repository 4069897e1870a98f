"""Developer tools for the course (not installed with the package): see each module's docstring."""
