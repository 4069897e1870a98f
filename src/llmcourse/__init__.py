"""The course library: datasets, reference models, plots and widgets for the book."""
